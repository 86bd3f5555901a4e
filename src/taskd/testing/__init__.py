"""Test helpers that ship with taskd: real servers on loopback, never mocks.

:class:`FakeLumina` is a fake of the external Lumina API that the ``lumina`` handler drives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskd.testing.fake_lumina import FakeLumina, FakeLuminaStats

__all__ = ["FakeLumina", "FakeLuminaStats"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `python -m taskd.testing.fake_lumina` does not find the
    # module already imported by its own package (runpy warns about that).
    if name in __all__:
        from taskd.testing import fake_lumina

        return getattr(fake_lumina, name)
    raise AttributeError(name)
