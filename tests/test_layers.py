"""Imports point down only: core <- methods and eval <- the application (walked with ast, so
imports inside functions count too)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "ddcore": "core",
    "mgd3": "methods",
    "patchsel": "methods",
    "manifoldgd": "methods",
    "baselines": "methods",
    "eval": "eval",
    "ddapp": "app",
}
MAY_IMPORT = {
    "core": {"core"},
    "methods": {"core", "methods"},
    "eval": {"core", "eval"},
    "app": {"core", "methods", "eval", "app"},
}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return {n for n in names if n in LAYERS}


def wrong_imports(root: Path) -> list[str]:
    wrong = []
    for package, layer in LAYERS.items():
        paths = sorted((root / package).rglob("*.py"))
        if not paths:
            wrong.append(f"{package}/ holds no module (the walk would pass by seeing nothing)")
        for path in paths:
            for target in imported_packages(path):
                if LAYERS[target] not in MAY_IMPORT[layer]:
                    wrong.append(f"{path.relative_to(root)} ({layer}) imports {target} ({LAYERS[target]})")
    return wrong


def test_every_package_imports_only_its_own_layer_and_those_below():
    wrong = wrong_imports(ROOT)
    assert not wrong, "\n".join(wrong)


def test_the_walk_catches_an_upward_import_inside_a_function(tmp_path):
    """The check can fail: a core module importing the application from inside a function, and a
    package with no module, are both reported."""
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("import ddcore\n" if package != "ddcore" else "")
    (tmp_path / "ddcore" / "late.py").write_text("def f():\n    from ddapp.tasks import build\n")
    (tmp_path / "eval" / "__init__.py").unlink()
    assert wrong_imports(tmp_path) == [
        "ddcore/late.py (core) imports ddapp (app)",
        "eval/ holds no module (the walk would pass by seeing nothing)",
    ]
