"""The layering of ARCHITECTURE.md, checked on the source: which part of the package may import which, no import
cycles, no intra-package import hidden inside a function, and model files that import only their siblings (they are
copied as a checkpoint's remote code)."""

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Lower layers never import higher ones (ARCHITECTURE.md). A module's layer is that of its longest matching prefix.
LAYERS = {
    "modeling_vlp.version_check": 0,
    "modeling_vlp.transformers_compat": 0,
    "modeling_vlp.configuration_": 0,
    "modeling_vlp.presets": 0,
    "modeling_vlp.modeling_": 0,
    "modeling_vlp.losses": 0,
    "modeling_vlp.processors": 0,
    "modeling_vlp.registration": 1,
    "modeling_vlp.data": 2,
    "modeling_vlp.training": 3,
    "modeling_vlp.evaluation": 4,
    "modeling_vlp.families": 5,
    "modeling_vlp.pipelines": 6,
    "modeling_vlp.hub": 6,
    "modeling_vlp.conversion": 7,
    "modeling_vlp.commands": 8,
}
TOP = "modeling_vlp"  # the package's __init__: the public API, imports everything
# Files a checkpoint carries as remote code: configs, layers, models, their heads and losses (and the seam).
MODEL_LAYER = ("modeling_vlp.configuration_", "modeling_vlp.modeling_", "modeling_vlp.losses",
               "modeling_vlp.transformers_compat")  # fmt: skip


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO_ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] in ("processors", "conversion"):  # installed as modeling_vlp.processors / modeling_vlp.conversion
        parts = ["modeling_vlp", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_files() -> list[Path]:
    files = [*REPO_ROOT.glob("modeling_vlp/**/*.py"), *REPO_ROOT.glob("processors/*.py"), *REPO_ROOT.glob("conversion/*.py")]
    # The `evaluate` metric scripts are loaded by path (evaluate.load), as a user's code would import the package.
    return sorted(path for path in files if "/metrics/vlp_" not in str(path))


def layer(module: str) -> int:
    if module == TOP:
        return max(LAYERS.values()) + 1
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix if prefix.endswith("_") else prefix + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer of ARCHITECTURE.md: add it to the table there and here.")
    return LAYERS[max(matches, key=len)]


def imports_of(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) of every intra-package import of `path`."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    tree = ast.parse(path.read_text())
    top_level = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == TOP or target.startswith(TOP + "."):
                names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
                found.extend((name, id(node) not in top_level, node.lineno) for name in names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == TOP or alias.name.startswith(TOP + "."):
                    found.append((alias.name, id(node) not in top_level, node.lineno))
    return found


def known_module(name: str, modules: set[str]) -> str:
    """`from .x import y` names either the module x.y or the name y of module x."""
    return name if name in modules else name.rsplit(".", 1)[0]


FILES = package_files()
MODULES = {module_name(path) for path in FILES}
GRAPH = {module_name(path): {known_module(name, MODULES) for name, _, _ in imports_of(path)} for path in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_imports_respect_the_layers(path):
    module = module_name(path)
    for name, in_function, line in imports_of(path):
        target = known_module(name, MODULES)
        assert not in_function, f"{path.name}:{line} imports {target} inside a function (a cycle dodged?)"
        if target == module:
            continue
        assert layer(target) <= layer(module), (
            f"{path.name}:{line}: {module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        )
        if module.startswith(MODEL_LAYER):
            assert target.startswith(MODEL_LAYER), f"model file {path.name}:{line} imports {target}: not remote code"


def test_there_is_no_import_cycle():
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if target == module or target not in GRAPH:
                continue
            if state.get(target) == "open":
                cycle = trail[trail.index(target) :] + [target] if target in trail else [module, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_table_names_every_module():
    for module in MODULES:
        layer(module)
