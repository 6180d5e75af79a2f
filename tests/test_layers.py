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


def test_every_package_imports_only_its_own_layer_and_those_below():
    wrong = []
    for package, layer in LAYERS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in imported_packages(path):
                if LAYERS[target] not in MAY_IMPORT[layer]:
                    wrong.append(f"{path.relative_to(ROOT)} ({layer}) imports {target} ({LAYERS[target]})")
    assert not wrong, "\n".join(wrong)


def test_the_layers_exist_as_folders():
    assert all((ROOT / package / "__init__.py").is_file() for package in LAYERS)
