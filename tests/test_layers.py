"""Layers point down: a folder imports only from folders below it (README, map of the repository)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# folder -> layer; a module may import its own folder or any folder of a LOWER layer.
LAYERS = {
    "core": 0,
    "models": 1,
    "indicators": 2,
    "regression": 2,
    "selection": 3,
    "experiments": 4,
    "generation": 4,
    "cli": 5,
}
SUB = {name for name in LAYERS if name != "core"}


def imported_folders(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] != "instructmining":
                continue
            folder = parts[1] if len(parts) > 1 and parts[1] in SUB else "core"
            yield node.lineno, folder


def test_layers_point_down():
    bad = []
    for folder, layer in LAYERS.items():
        for path in (REPO / folder).rglob("*.py"):
            for line, target in imported_folders(path):
                if target != folder and LAYERS[target] >= layer:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports instructmining.{target}")
    assert not bad, "imports pointing up or sideways:\n" + "\n".join(bad)
