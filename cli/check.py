"""`instructmining check`: evaluation-set contamination and duplicates in a data file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from instructmining.cli.options import map_option, model_option, overwrite_option, quiet_option

#: exit status when the check found contamination (or duplicates, with --dedup)
FOUND = 3


@click.command("check")
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--eval",
    "eval_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="EVAL",
    help="An evaluation set to look for in DATA (repeat for several): the Self-Instruct "
    "user-oriented file, Vicuna questions (answers optional), or any record file.",
)
@click.option(
    "--ngram",
    type=int,
    default=13,
    show_default=True,
    help="Words per n-gram of the n-gram overlap check.",
)
@click.option(
    "--min-shared",
    type=int,
    default=1,
    show_default=True,
    help="N-grams a record must share with an eval item to be flagged.",
)
@click.option(
    "--jaccard",
    type=float,
    default=0.4,
    show_default=True,
    help="Near match: Jaccard similarity of word shingles at or above which a record is "
    "flagged (MinHash LSH, confirmed exactly).",
)
@click.option(
    "--shingle",
    type=int,
    default=5,
    show_default=True,
    help="Words per shingle of the near-match and near-duplicate checks.",
)
@click.option(
    "--dedup",
    is_flag=True,
    help="Also report exact and near-duplicate clusters within DATA.",
)
@click.option(
    "--dedup-jaccard",
    type=float,
    default=0.5,
    show_default=True,
    help="Near duplicates: Jaccard similarity of the records' shingles (their outputs' "
    "shingles must reach 0.3 as well).",
)
@click.option(
    "--semantic",
    type=float,
    default=None,
    metavar="COS",
    help="Duplicates also by cosine similarity >= COS in the knn6 indicator's embedding space "
    "(implies --dedup; --profile and --model knn6=... choose the embedder).",
)
@click.option(
    "--profile",
    type=click.Choice(["local", "lite", "offline", "paper"]),
    default=None,
    help="Profile whose knn6 embedder --semantic uses (default: the default profile).",
)
@model_option
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help="Write every match and duplicate link: .jsonl, .json, .csv or .parquet, one row per "
    "(record, eval item or other record, kind).",
)
@map_option
@overwrite_option
@quiet_option
def check_command(
    data: Path,
    eval_paths: tuple[Path, ...],
    ngram: int,
    min_shared: int,
    jaccard: float,
    shingle: int,
    dedup: bool,
    dedup_jaccard: float,
    semantic: float | None,
    profile: str | None,
    models: dict[str, str],
    report: Path | None,
    field_map: dict[str, str],
    overwrite: bool,
    quiet: bool,
) -> None:
    """Look for evaluation items (--eval) and duplicates (--dedup) in DATA.

    Contamination is checked on each record's prompt (instruction + input) and on
    the whole example (prompt + output), after normalising case, Unicode forms,
    punctuation and spacing: exact matches, shared word n-grams (--ngram) and
    near matches (--jaccard over --shingle-word shingles). Duplicates are exact
    (same normalised text), near (--dedup-jaccard) or, with --semantic, close in
    the knn6 embedding space.

    \b
    Exit status: 0 nothing found; 3 contamination found (or duplicates, with
    --dedup); 2 a bad command line or unreadable input; 1 a runtime failure.

    \b
    Examples:
      instructmining check pool.jsonl --eval self_instruct_user_oriented_252.jsonl
      instructmining check pool.jsonl --eval a.jsonl --eval b.jsonl --report hits.csv
      instructmining check pool.jsonl --dedup --report dups.jsonl
      instructmining check pool.jsonl --dedup --semantic 0.95 --profile lite
    """
    from instructmining.errors import ParameterError
    from instructmining.progress import progress_bar, progress_enabled
    from instructmining.readers import read_records
    from instructmining.selection.contamination import (
        ContaminationSettings,
        find_contamination,
        read_eval_files,
    )
    from instructmining.selection.dedup import DedupSettings
    from instructmining.writers import check_output, write_rows

    dedup = dedup or semantic is not None
    if not eval_paths and not dedup:
        raise ParameterError("check: give --eval EVAL (repeatable) and/or --dedup")
    settings = (
        ContaminationSettings(ngram=ngram, min_shared=min_shared, jaccard=jaccard, shingle=shingle)
        if eval_paths
        else None
    )
    dedup_settings = (
        DedupSettings(jaccard=dedup_jaccard, shingle=shingle, semantic=semantic) if dedup else None
    )
    if report is not None:
        check_output(report, overwrite=overwrite, inputs=[data, *eval_paths])
    evalset = read_eval_files(list(eval_paths)) if eval_paths else None
    records = read_records(data, field_map=field_map or None).records
    shown = progress_enabled(quiet)
    rows: list[dict[str, Any]] = []
    found = False

    click.echo(f"{data}: {len(records)} records")
    if settings is not None and evalset is not None:
        with progress_bar(len(records), "contamination", enabled=shown) as bar:
            found_eval = find_contamination(
                records,
                evalset.records,
                evalset.origin,
                settings,
                parts=evalset.parts,
                on_progress=bar.update,
            )
        summary = found_eval.summary()
        found = found or bool(found_eval.matches)
        click.echo(
            f"contamination: {summary['contaminated']} records overlap "
            f"{summary['eval']} eval items "
            f"({_counts(summary['by_kind'])})"
        )
        for source, counts in summary["by_eval"].items():
            kinds = {k: counts[k] for k in settings.kinds}
            click.echo(
                f"  {source}: {counts['eval_items_matched']} of {counts['eval_items']} items "
                f"matched; records: {_counts(kinds)}"
            )
        rows.extend({"check": "contamination", **m.to_row()} for m in found_eval.matches)
    if dedup_settings is not None:
        dups = _duplicates(records, dedup_settings, profile, models, shown)
        summary = dups.summary()
        found = found or bool(dups.clusters)
        click.echo(
            f"duplicates: {summary['clusters']} clusters holding "
            f"{summary['records_in_clusters']} records; keeping one of each drops "
            f"{summary['duplicates']} (clusters with links: "
            f"{_counts(summary['clusters_by_link'])})"
        )
        cluster_of = {i: c for c, members in enumerate(dups.clusters) for i in members}
        rows.extend(
            {
                "check": "duplicate",
                "cluster": cluster_of[link.a] + 1,
                "pool_id": records[link.a].id,
                "pool_row": link.a + 1,
                "other_id": records[link.b].id,
                "other_row": link.b + 1,
                "kind": link.kind,
                "score": round(link.score, 6),
            }
            for link in dups.links
        )
    if report is not None:
        write_rows(rows, report, overwrite=overwrite, inputs=[data, *eval_paths])
        click.echo(f"report: {len(rows)} rows -> {report}")
    if found:
        click.get_current_context().exit(FOUND)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _duplicates(
    records: list[Any], settings: Any, profile: str | None, models: dict[str, str], shown: bool
) -> Any:
    from instructmining.progress import progress_bar
    from instructmining.selection.dedup import find_duplicates, knn6_embeddings

    embeddings = None
    if settings.semantic is not None:
        embeddings = knn6_embeddings(records, profile=profile, models=models)
    with progress_bar(len(records), "duplicates", enabled=shown) as bar:
        return find_duplicates(records, settings, embeddings=embeddings, on_progress=bar.update)
