"""The layers of docs/design.md, checked: no kit module imports one from a layer above it (every import is
read, function-level ones and those under `if __name__ == "__main__":` too), and every module has a layer."""
import ast
import re
from pathlib import Path

import pytest

KIT = Path(__file__).parents[1] / "kit"
# Each module's layer, lowest first; a package's name covers its modules. docs/design.md's table lists the
# same modules in the same rows (test_the_design_table_names_the_same_layers).
LAYERS = {
    "foundations": ["errors", "paths", "log", "files", "processes", "gpus", "device", "launch", "commands",
                    "notebook"],
    "the problem": ["metric", "cards", "config", "options", "data", "image_cache", "folds", "sample", "submission"],
    "learning": ["models", "age", "augment", "trainer", "predict", "trunk", "inputs", "train", "throughput"],
    "runs": ["rundir", "selection", "estimate", "cv", "parallel", "pseudo", "report"],
    "using runs": ["blend", "ensemble", "best", "tune", "bench"],
    "Kaggle": ["kaggle"],
    "the command line": ["__main__"],
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}


def module_name(path: Path) -> str:
    parts = path.relative_to(KIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """kit.tune.space -> the rank of "tune"; kit itself (its __init__) has none."""
    parts = module.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None


def imported(path: Path) -> set[str]:
    """The kit modules a file imports, relative imports resolved, `from kit.x import name` as kit.x."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            names.add(".".join([*base, *([node.module] if node.module else [])]))
    return {name for name in names if name == "kit" or name.startswith("kit.")}


MODULES = sorted(KIT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(KIT.parent)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    own = layer_of(module_name(path))
    if own is None:
        assert module_name(path) == "kit", f"{path}: no layer in LAYERS"
        return
    names = list(LAYERS)
    upward = sorted(f"{name} ({names[layer_of(name)]})" for name in imported(path)
                    if layer_of(name) is not None and layer_of(name) > own)
    assert not upward, f"{module_name(path)} ({names[own]}) imports from a layer above it: {', '.join(upward)}"


def test_every_layer_names_modules_that_exist():
    present = {path.parts[len(KIT.parts)].removesuffix(".py") for path in MODULES}
    assert set(RANK) == present - {"__init__"}


def test_the_design_table_names_the_same_layers():
    design = (KIT.parent / "docs" / "design.md").read_text()
    rows = {cells[0]: cells[1] for cells in (
        [cell.strip() for cell in line.strip("|").split("|")] for line in design.splitlines()
        if line.startswith("| ")) if cells[0] in LAYERS}
    assert list(rows) == list(LAYERS)
    for layer, modules in LAYERS.items():
        listed = set(re.findall(r"`([a-z_]+)/?`", rows[layer]))
        assert listed == set(modules), (layer, listed ^ set(modules))
