"""`python -m instructmining.cli`: the same as the `instructmining` command."""

from instructmining.cli.app import main

main()
