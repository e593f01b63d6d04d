"""Imports run one way: data_loading/ and model/ use only the leaf modules, never the run loop's layer.

Every ``import`` and ``from ... import`` of every module is read from its
source (including imports inside functions), so an arrow running back up
fails here, whatever the test run happens to import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROJECT = ("data_loading", "model", "runtime")
# Imported by every package; import no project module themselves.
LEAF = {"runtime.errors", "runtime.compat", "runtime.geometry"}
LOWER_PACKAGES = ("data_loading", "model")  # may import only themselves and the leaf


def imported_modules(source: str) -> set[str]:
    """Dotted names of the project modules a source file imports (``from x import y`` counts x.y when y is one)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").exists())
    return {name for name in names if name.split(".")[0] in PROJECT}


def back_arrows(module: str, imports: set[str]) -> list[str]:
    """The imports of ``module`` that break the direction."""
    package = module.split(".")[0]
    if module in LEAF:
        return sorted(imports)
    if package in LOWER_PACKAGES:
        # "from data_loading import preprocessing" names the package itself: judged by its module name
        return sorted(name for name in imports if name not in LEAF and name.split(".")[0] != package
                      and name != package)
    return []


def project_modules() -> dict[str, Path]:
    return {".".join(path.relative_to(ROOT).with_suffix("").parts): path
            for package in PROJECT for path in sorted((ROOT / package).rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(project_modules()))
def test_no_import_runs_back_up(module):
    path = project_modules()[module]
    assert back_arrows(module, imported_modules(path.read_text())) == []


def test_the_check_sees_a_back_arrow_inside_a_function():
    source = "def f():\n    from runtime.run import Runner\n    from runtime.errors import UserInputError\n"
    assert back_arrows("model.unet", imported_modules(source)) == ["runtime.run"]
    assert back_arrows("runtime.errors", imported_modules("import model.unet\n")) == ["model.unet"]
    assert back_arrows("data_loading.tiles", imported_modules("from model import unet\n")) == ["model", "model.unet"]
