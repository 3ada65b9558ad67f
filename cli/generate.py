"""`instructmining generate` (Self-Instruct) and `instructmining loop` (generate → score → select)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from instructmining.cli.options import model_options, quiet_option

LLM_HELP = (
    "Backend: openai:MODEL (/completions), openai-chat:MODEL (/chat/completions), "
    "hf:NAME_OR_PATH_OR_ID (a catalogue name such as smollm2-135m-instruct, a local folder or a hub id). HTTP base URL from --base-url or "
    "OPENAI_BASE_URL (default https://api.openai.com/v1); key from the variable --api-key-env names."
)


def _check_llm(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from instructmining.generation.backends.base import parse_llm_spec

    try:
        parse_llm_spec(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"--llm {value!r}: "), ctx, param) from None
    return value


def _split_words(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    return tuple(w.strip() for w in value.split(",") if w.strip())


# options shared by `generate` and `loop`: (decorator, name of the keyword it sets)
_SHARED = [
    click.option(
        "--seeds",
        "seeds_path",
        type=click.Path(path_type=Path),
        required=True,
        help="Seed tasks: Self-Instruct layout (instruction, instances, is_classification) "
        "or plain records.",
    ),
    click.option(
        "--machine-pool",
        "pool_path",
        type=click.Path(path_type=Path),
        help="Tasks that start the machine pool, e.g. a subset chosen by `select`.",
    ),
    click.option("--llm", required=True, callback=_check_llm, metavar="SPEC", help=LLM_HELP),
    click.option(
        "--base-url", help="OpenAI-compatible server root, e.g. http://localhost:8000/v1."
    ),
    click.option(
        "--api-key-env",
        default="OPENAI_API_KEY",
        show_default=True,
        help="Environment variable holding the API key (none needed for local servers).",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=60.0,
        show_default=True,
        help="Seconds per HTTP request.",
    ),
    click.option(
        "--max-retries",
        type=click.IntRange(min=0),
        default=6,
        show_default=True,
        help="Retries on 429/5xx/timeouts, with exponential backoff.",
    ),
    click.option(
        "--backoff",
        type=click.FloatRange(min=0),
        default=1.0,
        show_default=True,
        help="Seconds before the first retry; doubles on each retry (60 s at most).",
    ),
    click.option(
        "--concurrency",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        help="HTTP requests in flight at once.",
    ),
    click.option(
        "--llm-device", default="auto", show_default=True, help="hf: auto, cpu, cuda, cuda:N."
    ),
    click.option(
        "--llm-dtype", default="auto", show_default=True, help="hf: auto, fp32, fp16, bf16."
    ),
    click.option(
        "--llm-template",
        type=click.Choice(["plain", "auto", "chat"]),
        default="plain",
        show_default=True,
        help="hf: how prompts reach the model. The Self-Instruct prompts are few-shot "
        "completion text, which a chat model continues best as plain text (measured on "
        "SmolLM2-135M-Instruct: 5 of 5 tasks kept plain, 0 of 5 through its chat template); "
        "auto/chat wrap each prompt in the tokenizer's chat template.",
    ),
    click.option(
        "--llm-batch-size",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        help="hf: prompts per generate call.",
    ),
    click.option(
        "--request-batch-size",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Instruction prompts per round.",
    ),
    click.option(
        "--similarity-threshold",
        type=click.FloatRange(0, 1),
        default=0.7,
        show_default=True,
        help="Drop an instruction whose ROUGE-L F1 with a kept one is above this.",
    ),
    click.option("--min-words", type=click.IntRange(min=1), default=4, show_default=True),
    click.option("--max-words", type=click.IntRange(min=1), default=150, show_default=True),
    click.option(
        "--blocklist",
        callback=_split_words,
        metavar="WORD,...",
        help="Comma-separated words that drop an instruction (default: Self-Instruct's list).",
    ),
    click.option(
        "--alpaca-blocklist",
        is_flag=True,
        help="Also drop instructions with Alpaca's extra words "
        "(video, audio, music, flowchart, diagram).",
    ),
    click.option("--max-instances", type=click.IntRange(min=1), default=5, show_default=True),
    click.option(
        "--classification-only",
        is_flag=True,
        help="Prompt with classification seeds only, to get classification tasks.",
    ),
    click.option(
        "--seed", type=int, default=42, show_default=True, help="Random seed for prompt sampling."
    ),
    click.option(
        "--max-idle-rounds",
        type=click.IntRange(min=1),
        default=10,
        show_default=True,
        help="Stop after this many rounds in a row keep nothing.",
    ),
]


def generator_options(f: Any) -> Any:
    """The seed, backend and filter options of `generate` and `loop`."""
    for option in reversed(_SHARED):
        f = option(f)
    return f


class _Run:
    """Seeds, machine pool, backend and generator settings built from the shared options."""

    def __init__(self, opts: dict[str, Any]) -> None:
        from instructmining.generation import filters
        from instructmining.generation.backends.base import create_backend
        from instructmining.generation.seeds import read_tasks

        if opts["min_words"] > opts["max_words"]:
            raise click.BadParameter(
                f"{opts['min_words']} is above --max-words {opts['max_words']}",
                param_hint="--min-words",
            )
        self.seeds = read_tasks(opts["seeds_path"])
        path = opts["pool_path"]
        self.pool = read_tasks(path) if path is not None else []
        words = opts["blocklist"] if opts["blocklist"] is not None else filters.DEFAULT_BLOCKLIST
        if opts["alpaca_blocklist"]:
            words = tuple(words) + filters.ALPACA_EXTRA_BLOCKLIST
        self.settings: dict[str, Any] = {
            "request_batch_size": opts["request_batch_size"],
            "similarity_threshold": opts["similarity_threshold"],
            "min_words": opts["min_words"],
            "max_words": opts["max_words"],
            "blocklist": tuple(words),
            "max_instances": opts["max_instances"],
            "classification_only": opts["classification_only"],
            "max_idle_rounds": opts["max_idle_rounds"],
        }
        self.seed: int = opts["seed"]
        self.backend = create_backend(
            opts["llm"],
            base_url=opts["base_url"],
            api_key_env=opts["api_key_env"],
            timeout=opts["timeout"],
            max_retries=opts["max_retries"],
            backoff=opts["backoff"],
            concurrency=opts["concurrency"],
            device=opts["llm_device"],
            dtype=opts["llm_dtype"],
            batch_size=opts["llm_batch_size"],
            template=opts["llm_template"],
        )

    def usage_line(self) -> str:
        u = self.backend.usage.to_dict()
        return (
            f"this session: {u['requests']} requests, {u['prompt_tokens']} prompt + "
            f"{u['completion_tokens']} completion tokens, {u['retries']} retries"
        )


def _check_dir(path: Path) -> None:
    """Refuse an output folder that is a file or cannot be written, before any model loads."""
    from instructmining.errors import InputError
    from instructmining.writers import check_writable

    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    check_writable(path)


@click.command("generate")
@generator_options
@click.option(
    "--n",
    "n",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Tasks to keep (a resumed run counts what it has already).",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for tasks.jsonl, machine_generated.jsonl, state.json and report/; "
    "an existing run there is resumed.",
)
@click.option(
    "--report/--no-report",
    default=True,
    show_default=True,
    help="Write the diversity report into OUTPUT_DIR/report.",
)
@quiet_option
def generate_command(n: int, output_dir: Path, report: bool, quiet: bool, **opts: Any) -> None:
    """Generate instruction-following tasks with Self-Instruct until N are kept.

    Each round prompts the LLM with 8 in-context instructions (6 seeds, 2 from the
    machine pool), filters the new instructions (ROUGE-L > 0.7, length, blocklist,
    format, duplicates), classifies them, generates instances and appends the kept
    tasks to OUTPUT_DIR. Run the same command again to resume a stopped run.

    \b
    Examples:
      instructmining generate --seeds seed_tasks.jsonl --llm openai:gpt-3.5-turbo-instruct -o gen/
      instructmining generate --seeds seeds.jsonl --llm openai-chat:llama3 \\
          --base-url http://localhost:11434/v1 --n 200 -o gen/
      instructmining generate --seeds seeds.jsonl --llm hf:/models/lm --machine-pool subset.jsonl -o gen/
    """
    from instructmining.errors import InstructMiningError, ParameterError
    from instructmining.generation.generator import FLAT_FILE, SelfInstructGenerator
    from instructmining.progress import progress_enabled

    _check_dir(output_dir)
    run = _Run(opts)
    run.backend.check()  # a missing model fails before OUTPUT_DIR gets any file
    try:
        gen = SelfInstructGenerator(backend=run.backend, n=n, seed=run.seed, **run.settings)
        result = gen.run(
            run.seeds, output_dir, machine_pool=run.pool, progress=progress_enabled(quiet)
        )
    except InstructMiningError:
        raise
    except ValueError as exc:  # a setting the generator refuses
        raise ParameterError(str(exc)) from None
    finally:
        run.backend.close()
    if result.resumed_from and not quiet:
        click.echo(f"resumed with {result.resumed_from} tasks already kept", err=True)
    click.echo(format_rounds(result.rounds))
    click.echo(
        f"kept {len(result.tasks)} of {n} tasks "
        f"({sum(len(t.instances) for t in result.tasks)} instances) in {output_dir / FLAT_FILE}; "
        + run.usage_line()
    )
    if report and result.tasks:
        from instructmining.generation.report import write_report

        path = write_report(result.tasks, run.seeds, output_dir / "report")
        click.echo(f"diversity report: {path}")
    if result.message:
        click.echo(f"Warning: {result.message}", err=True)


@click.command("loop")
@generator_options
@click.option(
    "-r",
    "--rule",
    "rule_spec",
    required=True,
    metavar="RULE.json|paper-v1|paper-v3",
    help="The rule whose indicators score each round and whose prediction selects.",
)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--per-round",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Tasks generated per round.",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Records (instances) selected per round; their tasks are the next machine pool.",
)
@click.option(
    "--strategy",
    default="rule",
    show_default=True,
    metavar="NAME",
    help="How each round's records are selected: a strategy of `select --strategy` "
    "(e.g. kcenter, random, rule+diverse:0.9); the rule's predictions are reported either way.",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for round_N/, loop_state.json, loop_stats.csv and loop.png; "
    "a run there is resumed.",
)
@model_options
@quiet_option
def loop_command(
    rule_spec: str,
    rounds: int,
    per_round: int,
    keep: int,
    strategy: str,
    output_dir: Path,
    models: dict[str, str],
    device: str | None,
    batch_size: int | None,
    quiet: bool,
    **opts: Any,
) -> None:
    """Closed loop: each round generates, scores with the rule's indicators, selects the best
    KEEP records and makes their tasks the next round's machine pool.

    \b
    Example:
      instructmining loop --seeds seed_tasks.jsonl --llm openai:m --base-url http://localhost:8000/v1 \\
          --rule rule.json --rounds 3 --per-round 500 --keep 200 -o loop/
    """
    from instructmining.errors import InstructMiningError, ParameterError
    from instructmining.generation.loop import format_loop_table, run_loop
    from instructmining.progress import progress_enabled
    from instructmining.regression import load_rule

    _check_dir(output_dir)
    try:
        rule = load_rule(rule_spec)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="--rule") from None
    run = _Run(opts)
    run.backend.check()  # a missing model fails before OUTPUT_DIR gets any file
    show = progress_enabled(quiet)

    def echo_round(row: dict[str, Any]) -> None:
        if not quiet:
            click.echo(
                f"round {row['round']}: {row['kept_tasks']} tasks, {row['selected']} records "
                f"selected; mean predicted loss {row['mean_predicted_loss']} -> "
                f"{row['mean_predicted_loss_selected']}",
                err=True,
            )

    try:
        result = run_loop(
            run.seeds,
            output_dir,
            backend=run.backend,
            rule=rule,
            rounds=rounds,
            per_round=per_round,
            keep=keep,
            strategy=strategy,
            machine_pool=run.pool,
            generator_settings=run.settings,
            models=models,
            device=device,
            batch_size=batch_size,
            seed=run.seed,
            progress=show,
            on_round=echo_round,
        )
    except InstructMiningError:
        raise
    except ValueError as exc:  # a setting the generator refuses
        raise ParameterError(str(exc)) from None
    finally:
        run.backend.close()
    if result.rounds:
        click.echo(format_loop_table(result.rounds))
        click.echo(f"table: {output_dir / 'loop_stats.csv'}; plot: {output_dir / 'loop.png'}")
    click.echo(run.usage_line())
    if result.message:
        click.echo(f"Warning: {result.message}", err=True)


def format_rounds(rounds: list[dict[str, Any]]) -> str:
    """Per-round statistics as a text table, with every drop reason as a column."""
    reasons = sorted({k for r in rounds for k in r.get("dropped", {})})
    head = ["round", "generated", "accepted", "clf", "kept", "instances", *reasons, "tokens"]
    rows = []
    for r in rounds:
        usage = r.get("usage", {})
        tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        rows.append(
            [
                str(r["round"]) + ("*" if r.get("recovered") else ""),
                *(
                    str(r.get(k, ""))
                    for k in (
                        "generated",
                        "accepted_instructions",
                        "classification",
                        "kept",
                        "instances",
                    )
                ),
                *(str(r.get("dropped", {}).get(k, 0)) for k in reasons),
                str(tokens),
            ]
        )
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
