"""The `instructmining` command: a thin click layer over the library."""

if __name__ != "instructmining.cli":  # the bare folder imported from the repository root
    raise ImportError("Import this as instructmining.cli (install the project: pip install -e .).")

from instructmining.cli.app import main

__all__ = ["main"]
