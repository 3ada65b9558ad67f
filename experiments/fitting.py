"""`study fit`: the regression issue's fit on the study's results table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from instructmining.errors import InstructMiningError, OutputExistsError, ParameterError
from instructmining.experiments.lock import holds_study_lock
from instructmining.experiments.store import ResultsStore
from instructmining.experiments.study import Study
from instructmining.writers import write_rows


@dataclass
class StudyFit:
    """Where `fit_study` wrote its outputs, and the fit result itself."""

    result: Any
    folder: Path
    table_path: Path
    rule_path: Path
    n_rows: int
    features: list[str]
    config: str = ""


def main_config(study: Study) -> str:
    """The configuration with the most finished candidates (ties: the earliest)."""
    return ResultsStore(study.results_path).config


def results_table(study: Study, config: str | None = None) -> Any:
    """One configuration's finished rows (indicator means, eval_loss, metadata) as a DataFrame.

    `config` None: the configuration with the most finished candidates.
    """
    known = ResultsStore(study.results_path).configs()
    if config is not None and known and config not in known:
        raise ParameterError(
            f"{study.path}: no results for configuration {config!r}; it holds "
            + ", ".join(f"{c or '(unnamed)'} ({d} done)" for c, (d, _) in known.items())
        )
    chosen = main_config(study) if config is None else config
    table = ResultsStore(study.results_path, chosen).table()
    if table.empty:
        raise InstructMiningError(
            f"{study.path}: no finished candidates yet; run `instructmining study run {study.path}`"
        )
    return table


#: training settings a results row carries, copied into a study rule's provenance
_TRAINING = ("template", "precision", "max_length", "batch_size", "epochs", "lr", "seed", "lora")


def study_provenance(study: Study, table: Any) -> dict[str, Any]:
    """What a rule fitted on `table` (rows of `study`) came from: the study folder, the
    configuration, base model and training, the sources, D_eval and the candidates."""
    first = table.iloc[0]
    manifest = study.manifest
    sources = manifest.get("sources") or {}
    evaluation = manifest.get("eval") or {}
    kinds = table["kind"].value_counts().to_dict() if "kind" in table.columns else {}
    return {
        "folder": study.path.resolve().name,
        "configuration": str(first.get("config", "")),
        "base_model": str(first.get("base_model", "")),
        "training": {
            k: first[k].item() if hasattr(first[k], "item") else first[k]
            for k in _TRAINING
            if k in table.columns
        },
        "sources": {
            name: {
                "file": Path(str(src.get("relpath") or src.get("path", ""))).name,
                "field_map": src.get("field_map", ""),
                "records": src.get("kept"),
            }
            for name, src in sources.items()
        },
        "evaluation_set": {
            "files": [Path(str(p)).name for p in evaluation.get("relpaths") or []],
            "records": evaluation.get("records"),
        },
        "candidates": len(table),
        "candidate_kinds": {str(k): int(v) for k, v in kinds.items()},
        "candidate_size": manifest.get("size"),
        "pool_fingerprint": manifest.get("pool_fingerprint", ""),
    }


def added_indicators(
    study: Study, names: Sequence[str], models: Mapping[str, str] | None = None
) -> list[Any]:
    """Indicators outside the study's plan, to score on its finished candidates at fit time.

    One that derives from a study indicator (log_perplexity from perplexity) is built
    with that indicator's stored settings, so it reads the study's cached scores and
    describes the same model; any other with the settings of the study's profile and
    the checkpoints in `models` (`--model reward=/ckpt`).
    """
    from instructmining.indicators import profiles
    from instructmining.indicators.registry import registered
    from instructmining.indicators.spec import check_params

    stored = {p["name"]: p for p in study.indicator_params}
    classes = registered()
    built = []
    for name in names:
        if name in stored:
            raise ParameterError(
                f"--add-indicators: {name} is one of the study's own indicators already"
            )
        cls = classes.get(name)
        if cls is None:
            raise ParameterError(
                f"--add-indicators: no indicator {name!r}; registered: {', '.join(sorted(classes))}"
            )
        profile = str(study.manifest.get("profile") or "") or None
        wanted = {k: v for k, v in (models or {}).items() if k == name}
        # the indicator's own hook says what it transforms; unchecked: nothing loads here
        (probe,) = profiles.build(
            names=[name], profile=profile, models=wanted, check_models=False
        ).indicators
        base = probe.derived_from()
        parent = base.name if base is not None and base.name in stored else None
        if parent is not None:
            if wanted:
                raise ParameterError(
                    f"--model {name}: {name} is computed from the study's {parent} and "
                    f"uses its model; drop --model {name}"
                )
            settings = {k: v for k, v in stored[parent].items() if k != "fingerprints"}
            _, kwargs = check_params({**settings, "name": name}, source=study.path / "study.json")
            built.append(cls(**kwargs))
        else:
            built.extend(profiles.build(names=[name], profile=profile, models=wanted).indicators)
    return built


def add_indicator_means(study: Study, table: Any, indicators: Sequence[Any]) -> Any:
    """`table` with each added indicator's mean over every candidate's records (study cache)."""
    from instructmining.experiments.runner import score_candidate
    from instructmining.progress import progress_bar, progress_enabled

    if not indicators:
        return table
    rows = []
    with progress_bar(
        len(table), "added indicators", enabled=progress_enabled(), unit="candidate"
    ) as bar:
        for cid in table["candidate_id"]:
            means = score_candidate(study, str(cid), indicators)
            means.pop("score_s", None)
            rows.append(means)
            bar.update(1)
    out = table.copy()
    for column in rows[0]:
        out[column] = [r[column] for r in rows]
    return out


@holds_study_lock("study fit")
def fit_study(
    path: str | Path,
    *,
    features: list[str] | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    config: str | None = None,
    add_indicators: Sequence[str] = (),
    name: str | None = None,
    models: Mapping[str, str] | None = None,
    **fit_options: Any,
) -> StudyFit:
    """Fit a rule on the study's results; write results.csv, rule.json and the report.

    `add_indicators`: indicators outside the plan, scored on the finished candidates
    now (see `added_indicators`) and offered to the fit beside the planned ones.
    """
    from instructmining.indicators.spec import check_params
    from instructmining.regression import fit_rule

    study = Study(path)
    # stored settings are copied into the rule: checked as data first (the code version
    # is checked where scores are computed: `study run`, `select`)
    for stored in study.indicator_params:
        check_params(stored, source=study.path / "study.json", check_version=False)
    table = results_table(study, config)
    unused = sorted(set(models or {}) - set(add_indicators))
    if unused:
        raise ParameterError(
            f"--model {', '.join(unused)}: only an indicator of --add-indicators is scored "
            "here (the study's own were scored by its plan)"
        )
    extra = added_indicators(study, add_indicators, models)
    params = {p["name"]: p for p in study.indicator_params}
    params.update({ind.name: ind.params() for ind in extra})
    columns = [c for c in params if c in table.columns or c in {i.name for i in extra}]
    chosen = features if features else columns
    unknown = [f for f in chosen if f not in columns and f not in table.columns]
    if unknown:
        raise ParameterError(
            f"--features: {', '.join(unknown)} not in the results table; "
            f"indicator columns: {', '.join(columns)} (--add-indicators scores others)"
        )
    folder = Path(out_dir) if out_dir else study.path / "fit"
    rule_path = folder / "rule.json"
    if rule_path.exists() and not overwrite:
        raise OutputExistsError(f"{rule_path}: exists already; pass --overwrite to refit")
    table = add_indicator_means(study, table, extra)
    folder.mkdir(parents=True, exist_ok=True)
    # the table as fitted, kept beside the rule
    table_path = write_rows(table, folder / "results.csv", overwrite=True)
    result = fit_rule(
        table,
        features=chosen,
        loss="eval_loss",
        indicators={f: params[f] for f in chosen if f in params},
        name=name or f"study {study.path.resolve().name}",
        source=table_path,
        **fit_options,
    )
    facts = study_provenance(study, table)
    result.rule = replace(
        result.rule,
        provenance={**result.rule.provenance, "study": facts},
        notes=(
            f"{result.rule.notes} Study {facts['folder']}: {facts['candidates']} candidate "
            f"datasets of {facts['candidate_size']} records finetuning {facts['base_model']} "
            f"(configuration {facts['configuration']}), eval loss on "
            f"{facts['evaluation_set']['records']} D_eval records."
            + (
                f" Added at fit time (scored on the finished candidates): "
                f"{', '.join(ind.name for ind in extra)}."
                if extra
                else ""
            )
        ),
    )
    result.write_report(folder, overwrite=True)
    result.rule.save(rule_path, overwrite=True)
    used = str(table["config"].iloc[0]) if "config" in table.columns else ""
    return StudyFit(result, folder, table_path, rule_path, len(table), chosen, used)
