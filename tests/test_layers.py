"""The layers of ``docs/architecture.md`` import only downward.

Each module's ``fedpress`` imports (static ``import`` / ``from`` statements, read
with :mod:`ast`, wherever they stand in the file) are mapped to their layer; a
module may import its own layer and the layers below it. Two further rules: the
simulator and Flower never import each other (both drive :mod:`fedpress.exchange`),
except Flower's ``task`` module, the simulator's training as Flower functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fedpress

ROOT = Path(fedpress.__file__).parent

#: bottom to top: the units (top-level modules or packages of fedpress) of each layer
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("base", frozenset({"errors", "_bytes", "_deps", "_cores", "dtypes", "bounds", "verify",
                         "io"})),
    ("stages", frozenset({"stages"})),
    ("tensor", frozenset({"abc", "state", "registry"})),
    ("codecs", frozenset({"eblc", "backends", "grad"})),
    ("model", frozenset({"frame", "isolate", "partition", "update", "api", "adaptive",
                         "fedpress"})),
    ("exchange", frozenset({"exchange"})),
    ("frontends", frozenset({"sim", "flower", "appfl", "analysis", "cli", "demo"})),
)
RANK = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}
#: (importer unit, imported unit) pairs refused although the ranks allow them
APART = {("sim", "flower"), ("flower", "sim")}
#: modules allowed to cross APART (Flower's task: the simulator's training for the example)
CROSSING = {"fedpress.flower.task"}


def _module(path: Path) -> tuple[str, str]:
    """(dotted module name, the package its relative imports start from)."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _unit(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "fedpress"


def _imports(path: Path, text: str | None = None) -> set[str]:
    """The fedpress modules ``path`` (source ``text``, read if None) imports."""
    _, package = _module(path)
    out: set[str] = set()
    source = path.read_text(encoding="utf-8") if text is None else text
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "fedpress")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x: x may be a module
                    out.update(f"{target}.{a.name}" for a in node.names)
                    continue
            else:
                target = node.module or ""
            if target.split(".")[0] == "fedpress":
                out.add(target)
    return out


def test_every_unit_has_a_layer() -> None:
    units = {_unit(_module(p)[0]) for p in ROOT.rglob("*.py")}
    assert units - set(RANK) == set(), "add the new module to LAYERS and docs/architecture.md"


def test_layers_import_only_downward() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        name, _ = _module(path)
        unit = _unit(name)
        for target in _imports(path):
            other = _unit(target)
            if other == "__version__":
                continue
            if RANK[other] > RANK[unit]:
                wrong.append(f"{name} imports {target} ({LAYERS[RANK[other]][0]} is above "
                             f"{LAYERS[RANK[unit]][0]})")
            elif (unit, other) in APART and name not in CROSSING:
                wrong.append(f"{name} imports {target} ({unit} and {other} stay apart)")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_import() -> None:
    """The rule can fail: a stage importing the model layer is caught."""
    probe = ROOT / "stages" / "probe.py"  # not written: its source is given
    name, _ = _module(probe)
    assert _imports(probe, "from ..update import UpdateEncoder\nfrom . import rans\n") == {
        "fedpress.update", "fedpress.stages.rans"}
    assert RANK[_unit("fedpress.update")] > RANK[_unit(name)]
