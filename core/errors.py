"""Errors a user can act on. The command line prints them without a traceback."""

from __future__ import annotations

from pathlib import Path


class InstructMiningError(Exception):
    """Base class for a mistake in the user's input or settings (exit code 1)."""

    exit_code = 1


class DataError(InstructMiningError, ValueError):
    """Input data that cannot be read as records; names the file and where (exit code 2)."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        where: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.reason = message
        prefix = ""
        if self.path is not None:
            prefix = self.path
            if line is not None:
                prefix += f", line {line}"
            elif where:
                prefix += f", {where}"
            prefix += ": "
        super().__init__(prefix + message)


class OutputExistsError(InstructMiningError, FileExistsError):
    """An output file exists already and overwriting was not asked for."""


class ParameterError(InstructMiningError, ValueError):
    """A parameter with a value it cannot take; the message names the parameter (exit code 2)."""

    exit_code = 2
