"""The house's floors (DESIGN.md, "Layout: who may import whom"): imports run one way.

Front ends (``python -m taskd`` -> cli -> api, testing) -> executor -> scaler, handlers,
metrics -> queue -> the ground floor (types, settings, errors, logs, systemd, embedded,
retries, testsignals). Every ``import taskd...`` in every module under ``src/taskd`` is read,
including imports inside functions and under ``TYPE_CHECKING``: a lazy import that runs back
up is still a loop.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import taskd

SRC = Path(taskd.__file__).parent

GROUND = {"types", "settings", "errors", "logs", "systemd", "embedded", "retries", "testsignals",
          "__init__"}
FLOOR = {"queue": 1, "metrics": 2, "handlers": 2, "scaler": 3, "executor": 4,
         "api": 5, "testing": 5, "cli": 6, "__main__": 7}
# What each middle-floor package may import besides the ground floor and itself.
ALLOWED = {
    "queue": set(),
    "metrics": set(),  # imports nothing else of taskd
    "handlers": set(),  # the contract and built-ins: types, errors, settings only
    "scaler": {"queue", "metrics"},
}


def _package(module: str) -> str:
    """``taskd.queue.store`` -> ``queue``; ``taskd.types`` -> ``types``; ``taskd``:
    ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _floor(package: str) -> int:
    return 0 if package in GROUND else FLOOR[package]


def _imports() -> dict[str, set[tuple[str, str]]]:
    """Package -> {(imported package, where)} for every taskd import under src/taskd."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        here = _package(module)
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.split(".")[0] != "taskd":
                    continue
                target = _package(name)
                if target != here and (target in GROUND or target in FLOOR):
                    found[here].add((target, f"{relative}:{node.lineno}"))
    return found


def test_every_package_has_a_floor() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in SRC.glob("*.py")}
    assert packages - set(FLOOR) - {"sql"} == set()
    assert modules - GROUND - {"__main__"} == set()


def test_no_import_runs_back_up() -> None:
    upward = sorted(
        f"{where}: {here} imports {target}"
        for here, targets in _imports().items()
        for target, where in targets
        if _floor(target) > _floor(here)
        or (_floor(target) == _floor(here) and here not in GROUND and target != here)
    )
    assert upward == []


def test_middle_floors_import_only_what_they_may() -> None:
    wrong = sorted(
        f"{where}: {here} imports {target}"
        for here, allowed in ALLOWED.items()
        for target, where in _imports().get(here, ())
        if target not in GROUND and target not in allowed
    )
    assert wrong == []


def test_importing_the_handlers_does_not_import_psycopg() -> None:
    code = ("import sys, taskd.handlers, taskd.handlers.registry, taskd.types; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('psycopg', 'psycopg_pool', 'taskd') and not m.startswith(("
            "'taskd.handlers', 'taskd.types', 'taskd.errors', 'taskd.settings', "
            "'taskd.retries')) and m != 'taskd'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
