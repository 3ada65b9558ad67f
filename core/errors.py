"""Errors a user can act on. The command line prints them as one line, without a traceback.

Exit codes (README, "Exit codes"): 2 when the command line or its input is wrong
and the user fixes it by changing them (`InputError` and its subclasses: a bad
parameter, unreadable or invalid data, an invalid rule or manifest, an output
that exists without --overwrite, a checkpoint path that does not exist); 1 when
the command was right but something it depends on failed (`InstructMiningError`
itself and the other subclasses: a missing optional package, a corrupt cache or
results store, an unwritable output location, training that diverged, a model
that cannot be loaded here, a study locked by another run). Click's own usage
errors exit 2 as well.
"""

from __future__ import annotations

from pathlib import Path


class InstructMiningError(Exception):
    """A failure the user can act on; as such, something the command depends on failed (exit 1)."""

    exit_code = 1


class InputError(InstructMiningError):
    """The command line or its input is wrong; changing them fixes it (exit code 2)."""

    exit_code = 2


class DataError(InputError, ValueError):
    """Input data that cannot be read as records; names the file and where (exit code 2)."""

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


class OutputExistsError(InputError, FileExistsError):
    """An output exists already and overwriting was not asked for (exit code 2)."""


class ParameterError(InputError, ValueError):
    """A parameter with a value it cannot take; the message names the parameter (exit code 2)."""


class OutputNotWritableError(InstructMiningError):
    """An output location this process cannot write to (read-only folder, /proc, ...) (exit 1).

    Checked before any work, so that hours of scoring are not lost at the last step.
    """


class CorruptFileError(InstructMiningError):
    """A cache or results store that cannot be read; names the file and the fix (exit code 1)."""


class MissingPackageError(InstructMiningError, ImportError):
    """An optional package the command needs is not installed; gives the pip line (exit 1)."""


class StudyLockedError(InstructMiningError):
    """Another process works on the study folder; names it (pid, host, start) (exit code 1)."""
