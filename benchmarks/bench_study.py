"""Benchmark the finetuning study end to end on ../shared/data with the tiny base.

plan (N mixtures x SIZE records of Alpaca / Dolly / HH-RLHF helpful-base) ->
run (tiny base: tokenizer + brief pretraining once, then finetune + eval per
candidate) -> fit. Prints and writes OUT/bench.json: total wall clock, the
base's build time, per-candidate time, training and evaluation tokens/s, and
the fitted rule's cross-validated error.

    python benchmarks/bench_study.py --out /tmp/bench_study            # 40 x 1,000
    python benchmarks/bench_study.py --out /tmp/b --n-mixtures 4 --size 200   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_study"))
    ap.add_argument("--n-mixtures", type=int, default=40)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="local worker processes")
    ap.add_argument("--epochs", type=int, default=None, help="default: the tiny default")
    ap.add_argument("--fresh", action="store_true", help="delete OUT first (else resume)")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}; nothing to benchmark", file=sys.stderr)
        return 1

    from instructmining.experiments.fitting import fit_study
    from instructmining.experiments.runner import run_study, settings_for
    from instructmining.experiments.store import ResultsStore
    from instructmining.experiments.study import MANIFEST, create_study

    study = args.out / "study"
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (study / MANIFEST).exists():
        ev = args.data / "eval"
        create_study(
            study,
            sources={
                "alpaca": args.data / "pools" / "alpaca_random_9k.json",
                "dolly": args.data / "pools" / "dolly_3k.json",
                "hh_helpful": args.data / "pools" / "hh_rlhf" / "helpful-base_test.jsonl.gz",
            },
            eval_paths=[
                ev / "self_instruct_user_oriented_252.jsonl",
                ev / "vicuna80_questions.jsonl",
                ev / "vicuna80_answers_gpt35.jsonl",
            ],
            n_mixtures=args.n_mixtures,
            size=args.size,
            seed=0,
        )
    plan_s = time.perf_counter() - t0
    over = {"workers": args.workers}
    settings = settings_for("tiny", **({"epochs": args.epochs} if args.epochs else {}))

    def show(cid: str, status: str, info: object) -> None:
        if status == "done" and isinstance(info, dict):
            print(
                f"{time.strftime('%H:%M:%S')} {cid} loss {info['eval_loss']:.4f} "
                f"wall {info['wall_s']:.1f}s train {info['train_tokens_per_s']:.0f} tok/s "
                f"eval {info['eval_tokens_per_s']:.0f} tok/s score {info['score_s']:.1f}s",
                flush=True,
            )
        else:
            print(f"{cid} {status}: {info}", flush=True)

    t1 = time.perf_counter()
    summary = run_study(study, settings, progress=False, on_result=show, **over)
    run_s = time.perf_counter() - t1
    total_s = time.perf_counter() - t0

    table = ResultsStore(study / "results.sqlite").table()
    base_info = json.loads((study / "base" / "tiny" / "tiny_base.json").read_text())
    fit_stats: dict[str, object] = {}
    try:
        fit = fit_study(study, overwrite=True)
        s = fit.result.statistics
        fit_stats = {
            k: s.get(k)
            for k in (
                "loo_rmse",
                "kfold_rmse",
                "kfold_selection_rmse",
                "baseline_loo_rmse",
                "r2",
                "adj_r2",
                "n",
            )
        }
        fit_stats["features"] = list(fit.result.rule.features)
        print(fit.result.summary())
    except Exception as exc:  # report what the fit said; the timing numbers still stand
        fit_stats = {"error": f"{type(exc).__name__}: {exc}"}

    def med(col: str) -> float:
        return float(statistics.median(table[col])) if len(table) else float("nan")

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15_at_end": os.getloadavg(),
        "n_candidates_done": len(table),
        "size": args.size,
        "workers": args.workers,
        "train_config": settings.train.__dict__,
        "plan_s": plan_s,
        "run_s_this_call": run_s,
        "total_s_this_call": total_s,
        "resumed": summary.skipped,
        "base": base_info,
        "per_candidate_wall_s_median": med("wall_s"),
        "per_candidate_wall_s_mean": float(table["wall_s"].mean()) if len(table) else None,
        "train_s_median": med("train_s"),
        "eval_s_median": med("eval_s"),
        "score_s_median": med("score_s"),
        "train_tokens_per_s_median": med("train_tokens_per_s"),
        "eval_tokens_per_s_median": med("eval_tokens_per_s"),
        "tokens_seen_median": med("tokens_seen"),
        "eval_loss_min_max": [float(table["eval_loss"].min()), float(table["eval_loss"].max())]
        if len(table)
        else None,
        "fit": fit_stats,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
