"""pyproject.toml declares what the code imports, the lock pins it, and the package list covers the code.

(CI's `scripts/lock.sh --check` proves the lock is exactly what pip-compile writes; these checks are the fast,
offline part: a new import without its declaration fails here first.)"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = ["app.py", "server", "pipeline", "engines", "musetalk", "voices", "bench", "testing", "tests", "examples"]
PROJECT = ROOT / "pyproject.toml"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return canonical(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0])


def project() -> dict:
    return tomllib.loads(PROJECT.read_text())["project"]


def declared() -> set[str]:
    p = project()
    names = {requirement_name(s) for s in p["dependencies"]}
    names |= {requirement_name(s) for specs in p["optional-dependencies"].values() for s in specs}
    nodeps = (ROOT / "requirements-nodeps.txt").read_text().splitlines()
    return names | {requirement_name(s) for s in nodeps if s.strip() and not s.startswith("#")}


def imported_modules() -> dict[str, str]:
    """Top-level modules imported anywhere in the code -> one file that imports it."""
    local = {p.name for p in ROOT.iterdir() if p.is_dir()} | {p.stem for p in ROOT.glob("*.py")}
    found: dict[str, str] = {}
    files = [f for c in CODE for f in ((ROOT / c).rglob("*.py") if (ROOT / c).is_dir() else [ROOT / c]) if f.exists()]
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, str(file.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared() -> None:
    distributions = packages_distributions()
    names = declared()
    missing = {
        module: where
        for module, where in imported_modules().items()
        if not any(canonical(d) in names for d in distributions.get(module, [module]))
    }
    assert missing == {}, f"imported but not in pyproject.toml (dependencies or an extra): {missing}"


def test_the_lock_pins_every_declared_package() -> None:
    lock = (ROOT / "requirements.txt").read_text()
    pinned = {canonical(m[1]) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    nodeps = {
        requirement_name(s)
        for s in (ROOT / "requirements-nodeps.txt").read_text().splitlines()
        if s.strip() and not s.startswith("#")
    }
    unpinned = declared() - pinned - nodeps - {"torch"}  # torch: constraints-cpu.txt (see scripts/lock.sh)
    assert unpinned == set()
    assert "# via" in lock and "scripts/lock.sh" in lock.splitlines()[4]


def test_the_package_list_covers_the_code() -> None:
    setuptools = tomllib.loads(PROJECT.read_text())["tool"]["setuptools"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "testing", "bench", "examples"}
    assert set(setuptools["packages"]) == packages
    assert setuptools["py-modules"] == ["app"]
    for script in project()["scripts"].values():
        module, _, function = script.partition(":")
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file() and f"def {function}(" in (
            ROOT / (module.replace(".", "/") + ".py")
        ).read_text()
