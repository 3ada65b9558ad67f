"""Map the repository's top-level folders onto the one `instructmining` namespace.

The design fixes the top level (indicators/, regression/, ...) while the import
name is `instructmining.<folder>`. setuptools' `package_dir` does the mapping for
wheels and editable installs alike; listing every sub-package found on disk keeps
a new sub-folder from silently missing from the wheel.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
# folder -> import name; `core` is the namespace root (records, IO, shared helpers).
FOLDERS = {
    "core": "instructmining",
    "cli": "instructmining.cli",
    "models": "instructmining.models",
    "indicators": "instructmining.indicators",
    "regression": "instructmining.regression",
    "selection": "instructmining.selection",
    "experiments": "instructmining.experiments",
    "generation": "instructmining.generation",
}


def _packages() -> dict[str, str]:
    found: dict[str, str] = {}
    for folder, name in FOLDERS.items():
        base = ROOT / folder
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            if any(part.startswith((".", "__")) for part in rel.parts):
                continue
            found[".".join((name, *rel.parts))] = init.parent.relative_to(ROOT).as_posix()
    return found


PACKAGES = _packages()
setup(packages=list(PACKAGES), package_dir=PACKAGES)
