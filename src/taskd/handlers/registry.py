"""Which function handles which ``kind``: built-ins, then entry points, then settings.

Later sources override earlier ones for the same kind, so an operator's setting always wins:

1. built-ins (``noop``, ``sleep``, ``fail``, ``http``, ``lumina``);
2. entry points in the group ``taskd.handlers`` of installed distributions (``name`` is the
   kind, ``value`` is ``module:function``); two distributions offering the same kind is an
   error unless the ``handlers`` setting names that kind and so settles it;
3. the setting ``handlers`` (``{"resize": "myapp.jobs:resize"}``).

Every override is kept in :attr:`HandlerRegistry.overridden` and shown by ``taskd handlers``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from taskd.errors import ConfigError
from taskd.handlers.base import Handler, HandlerSource, RegisteredHandler
from taskd.handlers.http import handle as http_handle
from taskd.handlers.lumina import handle as lumina_handle
from taskd.handlers.standard import fail, noop, sleep
from taskd.settings import Settings

ENTRY_POINT_GROUP = "taskd.handlers"
# The same rule as a subtask's kind column (sql/0001_initial.sql).
KIND_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")

BUILTINS: dict[str, Handler] = {
    "noop": noop,
    "sleep": sleep,
    "fail": fail,
    "http": http_handle,
    "lumina": lumina_handle,
}


def is_async_handler(fn: Any) -> bool:
    """True when calling ``fn`` returns an awaitable (an ``async def`` or async ``__call__``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004  (callable objects with async __call__)
    )


def import_path(path: str) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted) and return the object.

    Raises :class:`ImportError` or :class:`AttributeError` (with the cause) or
    :class:`ValueError` for a path without ``:``.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError("expected 'module:function'")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


class HandlerRegistry:
    """Handlers by kind. Build it with :meth:`load`; the daemon asks :meth:`get` per subtask."""

    def __init__(self) -> None:
        self._handlers: dict[str, RegisteredHandler] = {}
        #: handlers that a later source replaced, oldest first
        self.overridden: list[RegisteredHandler] = []

    @classmethod
    def load(
        cls, settings: Settings, *, discovered: Iterable[EntryPoint] | None = None
    ) -> HandlerRegistry:
        """Built-ins, then entry points of group ``taskd.handlers``, then ``settings.handlers``.

        ``discovered`` replaces the installed entry points (tests). Raises
        :class:`taskd.errors.ConfigError` naming the kind and the path when a handler does not
        import, is not callable, has an invalid kind name, or when two distributions offer the
        same kind that the settings do not settle.
        """
        registry = cls()
        for kind, fn in BUILTINS.items():
            registry.register(kind, fn, "builtin", f"{fn.__module__}:{fn.__name__}")

        points = entry_points(group=ENTRY_POINT_GROUP) if discovered is None else discovered
        offered: dict[str, list[EntryPoint]] = {}
        for point in points:
            offered.setdefault(point.name, []).append(point)
        for kind, candidates in sorted(offered.items()):
            if len(candidates) > 1 and kind not in settings.handlers:
                who = ", ".join(f"{_distribution(p)} ({p.value})" for p in candidates)
                raise ConfigError(
                    f"handler kind {kind!r} is offered by several entry points: {who}; "
                    f"choose one with the setting handlers.{kind}"
                )
            point = candidates[-1]
            where = f"{point.value} [{_distribution(point)}]"
            try:
                fn = point.load()
            except Exception as exc:
                raise ConfigError(
                    f"handler {kind!r}: entry point {where} does not import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            registry.register(kind, fn, "entry point", where)

        for kind, path in settings.handlers.items():
            try:
                fn = import_path(path)
            except Exception as exc:
                raise ConfigError(
                    f"invalid setting handlers.{kind}: {path!r} does not import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            registry.register(kind, fn, "settings", path)
        return registry

    def register(self, kind: str, fn: Any, source: HandlerSource, origin: str) -> RegisteredHandler:
        """Add (or replace) the handler for ``kind``; return what was registered.

        Raises :class:`taskd.errors.ConfigError` for an invalid kind name or a non-callable.
        """
        if not KIND_NAME.match(kind):
            raise ConfigError(
                f"handler kind {kind!r} from {origin} is not a valid kind "
                "(letters, digits, _ . : -, at most 200)"
            )
        if not callable(fn):
            raise ConfigError(
                f"handler {kind!r}: {origin} is a {type(fn).__name__}, not a function"
            )
        handler = RegisteredHandler(
            kind=kind, fn=fn, source=source, origin=origin, is_async=is_async_handler(fn)
        )
        previous = self._handlers.get(kind)
        if previous is not None:
            self.overridden.append(previous)
        self._handlers[kind] = handler
        return handler

    def get(self, kind: str) -> RegisteredHandler | None:
        """The handler for ``kind``, or None when nothing is registered for it."""
        return self._handlers.get(kind)

    def handlers(self) -> list[RegisteredHandler]:
        """Every registered handler, by kind."""
        return [self._handlers[kind] for kind in sorted(self._handlers)]

    def kinds(self) -> list[str]:
        return sorted(self._handlers)


def _distribution(point: EntryPoint) -> str:
    dist = point.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
