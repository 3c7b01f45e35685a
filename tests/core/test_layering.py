"""The import layering, read from the source (lazy imports inside functions count too).

    core  <-  musetalk, voices  <-  engines  <-  pipeline  <-  server  <-  app.py

A package imports only from itself and the layers below it; packages of one layer do not import each other, so
there is no cycle. testing/, bench/, examples/ and tests/ sit above everything and nothing below imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS: list[set[str]] = [{"core"}, {"musetalk", "voices"}, {"engines"}, {"pipeline"}, {"server"}, {"app"}]
TOOLS = {"testing", "bench", "examples", "tests"}  # above all layers
LEVEL = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def modules(package: str) -> list[Path]:
    path = ROOT / package
    return sorted(path.rglob("*.py")) if path.is_dir() else [ROOT / f"{package}.py"]


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level project package, line) of every absolute import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(n.split(".")[0], node.lineno) for n in names if n.split(".")[0] in LEVEL.keys() | TOOLS}
    return found


def violations() -> list[str]:
    bad = []
    for package, level in LEVEL.items():
        for path in modules(package):
            for target, line in imported_packages(path):
                if target == package:
                    continue
                if target in TOOLS or LEVEL[target] >= level:
                    bad.append(
                        f"{path.relative_to(ROOT)}:{line}: {package} (layer {level}) imports {target} "
                        f"(layer {'tools' if target in TOOLS else LEVEL[target]})"
                    )
    return bad


def test_every_package_imports_only_the_layers_below_it() -> None:
    assert violations() == []


def test_relative_imports_stay_inside_their_package() -> None:
    for package in LEVEL:
        for path in modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level > 1:
                    raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno}: import reaches above its package")


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The check is not vacuous: an upward import in a file is found."""
    bad = tmp_path / "x.py"
    bad.write_text("import json\nfrom pipeline.session import Session\n\ndef f():\n    import server.app\n")
    assert imported_packages(bad) == {("pipeline", 2), ("server", 5)}
