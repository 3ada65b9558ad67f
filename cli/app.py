"""The `instructmining` command group and its error handling."""

from __future__ import annotations

import sys
from typing import Any

import click

from instructmining import __version__
from instructmining.errors import InstructMiningError

EPILOG = """\b
Examples:
  instructmining indicators
  instructmining score examples/alpaca_style.jsonl -o scores.jsonl
  instructmining score data.csv --map instruction=question,output=answer -o scores.parquet
  instructmining score data.jsonl -o out.jsonl --on-error skip --keep-fields
"""


class Group(click.Group):
    """A click group that prints our errors as one line, `Error: ...`, with their exit code.

    2: the command line or its input is wrong; 1: something the command depends on
    failed (see `instructmining.errors`).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InstructMiningError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="instructmining")
def main() -> None:
    """Find the instruction-tuning data worth training on.

    Computes quality indicators for (instruction, input, output) records, fits a
    rule that predicts a finetuned model's loss from them, and uses it to select data.
    """


def _register_commands() -> None:
    from instructmining.cli import score

    main.add_command(score.indicators_command)
    main.add_command(score.score_command)

    from instructmining.cli import select

    main.add_command(select.select_command)

    from instructmining.cli import check

    main.add_command(check.check_command)

    from instructmining.cli import generate

    main.add_command(generate.generate_command)
    main.add_command(generate.loop_command)

    from instructmining.cli import study

    main.add_command(study.study_group)

    from instructmining.cli import compare

    study.study_group.add_command(compare.compare_command)

    from instructmining.cli import fit

    main.add_command(fit.fit_command)
    main.add_command(fit.rule_group)

    from instructmining.cli import models

    main.add_command(models.models_command)


_register_commands()
