"""`instructmining generate`: Self-Instruct generation with an LLM backend, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from instructmining.cli.options import quiet_option

LLM_HELP = (
    "Backend: openai:MODEL (/completions), openai-chat:MODEL (/chat/completions), "
    "hf:PATH_OR_ID (local Hugging Face causal LM). HTTP base URL from --base-url or "
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


@click.command("generate")
@click.option(
    "--seeds",
    "seeds_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Seed tasks: Self-Instruct layout (instruction, instances, is_classification) or plain records.",
)
@click.option(
    "--machine-pool",
    "pool_path",
    type=click.Path(path_type=Path),
    help="Tasks that start the machine pool, e.g. a subset chosen by `select`.",
)
@click.option("--llm", required=True, callback=_check_llm, metavar="SPEC", help=LLM_HELP)
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
    help="Folder for tasks.jsonl, machine_generated.jsonl, state.json and report/; an existing run there is resumed.",
)
@click.option("--base-url", help="OpenAI-compatible server root, e.g. http://localhost:8000/v1.")
@click.option(
    "--api-key-env",
    default="OPENAI_API_KEY",
    show_default=True,
    help="Environment variable holding the API key (none needed for local servers).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds per HTTP request.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=6,
    show_default=True,
    help="Retries on 429/5xx/timeouts, with exponential backoff.",
)
@click.option(
    "--backoff",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds before the first retry; doubles on each retry (60 s at most).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="HTTP requests in flight at once.",
)
@click.option(
    "--device", default="auto", show_default=True, help="hf backend: auto, cpu, cuda, cuda:N."
)
@click.option(
    "--dtype", default="auto", show_default=True, help="hf backend: auto, fp32, fp16, bf16."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="hf backend: prompts per generate call.",
)
@click.option(
    "--request-batch-size",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Instruction prompts per round.",
)
@click.option(
    "--similarity-threshold",
    type=click.FloatRange(0, 1),
    default=0.7,
    show_default=True,
    help="Drop an instruction whose ROUGE-L F1 with a kept one is above this.",
)
@click.option("--min-words", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--max-words", type=click.IntRange(min=1), default=150, show_default=True)
@click.option(
    "--blocklist",
    callback=_split_words,
    metavar="WORD,...",
    help="Comma-separated words that drop an instruction (default: Self-Instruct's list).",
)
@click.option(
    "--alpaca-blocklist",
    is_flag=True,
    help="Also drop instructions with Alpaca's extra words (video, audio, music, flowchart, diagram).",
)
@click.option("--max-instances", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--classification-only",
    is_flag=True,
    help="Prompt with classification seeds only, to get classification tasks.",
)
@click.option(
    "--seed", type=int, default=42, show_default=True, help="Random seed for prompt sampling."
)
@click.option(
    "--max-idle-rounds",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Stop after this many rounds in a row keep nothing.",
)
@click.option(
    "--report/--no-report",
    default=True,
    show_default=True,
    help="Write the diversity report into OUTPUT_DIR/report.",
)
@quiet_option
def generate_command(
    seeds_path: Path,
    pool_path: Path | None,
    llm: str,
    n: int,
    output_dir: Path,
    base_url: str | None,
    api_key_env: str,
    timeout: float,
    max_retries: int,
    backoff: float,
    concurrency: int,
    device: str,
    dtype: str,
    batch_size: int,
    request_batch_size: int,
    similarity_threshold: float,
    min_words: int,
    max_words: int,
    blocklist: tuple[str, ...] | None,
    alpaca_blocklist: bool,
    max_instances: int,
    classification_only: bool,
    seed: int,
    max_idle_rounds: int,
    report: bool,
    quiet: bool,
) -> None:
    """Generate instruction-following tasks with Self-Instruct until N are kept.

    Each round prompts the LLM with 8 in-context instructions (6 seeds, 2 from the
    machine pool), filters the new instructions (ROUGE-L > 0.7, length, blocklist,
    format, duplicates), classifies them, generates instances and appends the kept
    tasks to OUTPUT_DIR. Run the same command again to resume a stopped run.
    """
    from instructmining.errors import InstructMiningError
    from instructmining.generation import filters
    from instructmining.generation.backends.base import create_backend
    from instructmining.generation.generator import FLAT_FILE, SelfInstructGenerator
    from instructmining.generation.seeds import read_tasks
    from instructmining.progress import progress_enabled

    if min_words > max_words:
        raise click.BadParameter(f"--min-words {min_words} is above --max-words {max_words}")
    if output_dir.exists() and not output_dir.is_dir():
        raise InstructMiningError(f"{output_dir}: exists and is not a folder")
    seeds = read_tasks(seeds_path)
    pool = read_tasks(pool_path) if pool_path is not None else []
    words = blocklist if blocklist is not None else filters.DEFAULT_BLOCKLIST
    if alpaca_blocklist:
        words = tuple(words) + filters.ALPACA_EXTRA_BLOCKLIST
    backend = create_backend(
        llm,
        base_url=base_url,
        api_key_env=api_key_env,
        timeout=timeout,
        max_retries=max_retries,
        backoff=backoff,
        concurrency=concurrency,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
    )
    gen = SelfInstructGenerator(
        backend=backend,
        n=n,
        request_batch_size=request_batch_size,
        similarity_threshold=similarity_threshold,
        min_words=min_words,
        max_words=max_words,
        blocklist=words,
        max_instances=max_instances,
        classification_only=classification_only,
        seed=seed,
        max_idle_rounds=max_idle_rounds,
    )
    show = progress_enabled(quiet)
    try:
        result = gen.run(seeds, output_dir, machine_pool=pool, progress=show)
    except ValueError as exc:
        raise InstructMiningError(str(exc)) from None
    finally:
        backend.close()
    if result.resumed_from and not quiet:
        click.echo(f"resumed with {result.resumed_from} tasks already kept", err=True)
    click.echo(format_rounds(result.rounds))
    usage = backend.usage.to_dict()
    click.echo(
        f"kept {len(result.tasks)} of {n} tasks "
        f"({sum(len(t.instances) for t in result.tasks)} instances) in {output_dir / FLAT_FILE}; "
        f"this session: {usage['requests']} requests, {usage['prompt_tokens']} prompt + "
        f"{usage['completion_tokens']} completion tokens, {usage['retries']} retries"
    )
    if report and result.tasks:
        from instructmining.generation.report import write_report

        path = write_report(result.tasks, seeds, output_dir / "report")
        click.echo(f"diversity report: {path}")
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
