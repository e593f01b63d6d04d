"""Imports run one way: each group imports only itself and the groups below it.

Every ``import`` and ``from ... import`` of every module is read from its
source (including imports inside functions), so an arrow running back up
fails here, whatever the test run happens to import. Groups of one rank sit
side by side and may not import each other either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROJECT = ("common", "data_loading", "model", "runtime")
# Group (longest matching prefix) -> rank; lower ranks sit below.
RANK = {
    "common": 0,  # the leaf: imports no project module
    "data_loading": 1,
    "model": 1,
    "runtime.execution": 2,
    "runtime.inference": 2,
    "runtime.reporting": 2,
    "runtime.loop": 3,
    "runtime.cli": 4,
    "runtime": 4,  # the tools beside the CLI: parse_results, plot_curves
}


def group(module: str) -> str:
    """The group of a dotted module name: its longest prefix in RANK."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in RANK:
            return prefix
    raise KeyError(module)


def imported_modules(source: str) -> set[str]:
    """Dotted names of the project modules a source file imports (``from x import y`` counts x.y when y is one)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").exists()
                         or (ROOT / node.module.replace(".", "/") / alias.name).is_dir())
    return {name for name in names if name.split(".")[0] in PROJECT}


def back_arrows(module: str, imports: set[str]) -> list[str]:
    """The imports of ``module`` that point up, or sideways into another group of its rank."""
    own = group(module)
    wrong = []
    for name in imports:
        other = group(name)
        if other != own and RANK[other] >= RANK[own]:
            wrong.append(name)
    return sorted(wrong)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PROJECT:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


@pytest.mark.parametrize("module", sorted(project_modules()))
def test_no_import_runs_back_up(module):
    path = project_modules()[module]
    assert back_arrows(module, imported_modules(path.read_text())) == []


def test_every_module_has_a_group():
    for module in project_modules():
        assert group(module) in RANK


def test_the_check_sees_a_back_arrow_inside_a_function():
    source = ("def f():\n    from runtime.loop.runner import Runner\n"
              "    from common.errors import UserInputError\n")
    assert back_arrows("model.unet", imported_modules(source)) == ["runtime.loop.runner"]
    assert back_arrows("common.errors", imported_modules("import model.unet\n")) == ["model.unet"]
    assert back_arrows("data_loading.tiles", imported_modules("from model import unet\n")) == ["model", "model.unet"]


def test_the_check_sees_an_arrow_up_and_one_sideways():
    assert back_arrows("runtime.loop.runner", imported_modules("from runtime.cli.inputs import plan_data\n")) \
        == ["runtime.cli.inputs"]
    assert back_arrows("runtime.reporting.overlays",
                       imported_modules("from runtime.inference.strategies import class_ids\n")) \
        == ["runtime.inference.strategies"]
    assert back_arrows("runtime.cli.setup", imported_modules("from runtime.loop.roles import logs_here\n")) == []


MOST_IMPORTS = 13  # project modules one module may import: a module that needs more holds more than one job


def project_imports(path: Path) -> set[str]:
    """The project module files a module imports (a package counted only where none of its modules is)."""
    names = imported_modules(path.read_text())
    return {name for name in names if not any(other.startswith(name + ".") for other in names)}


@pytest.mark.parametrize("module", sorted(project_modules()))
def test_no_module_leans_on_too_many_others(module):
    imported = project_imports(project_modules()[module])
    assert len(imported) <= MOST_IMPORTS, sorted(imported)
