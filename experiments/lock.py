"""One writer per study folder: an exclusive OS file lock on `STUDY/.lock`.

Two `study run` on one folder would build the tiny base into the same place and
train every candidate twice. The commands that write to a study (run, fit,
compare, `select --size auto`, plan over an existing folder) hold the lock while
they work; a second one stops at once, naming the holder (pid, host, start time,
command) from the file's contents. The lock is `flock(2)` on an open file, so the
kernel drops it when its process ends, kill -9 included: a crash never leaves a
stale lock (the file stays; its contents only describe the last holder).
Read-only commands (status, export) take no lock. The lock is reentrant within
one thread; another thread or process is refused. Where `fcntl` does not exist
(Windows) nothing is locked.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from instructmining.errors import OutputNotWritableError, StudyLockedError

P = ParamSpec("P")
T = TypeVar("T")

LOCK_FILE = ".lock"
#: (study folder, thread) -> how many nested holders
_HELD: dict[tuple[str, int], int] = {}


def _describe(holder: dict[str, Any]) -> str:
    """`study run` (pid 12, host h, since ...) from what the holder wrote."""
    if not holder.get("pid"):
        return "another process (it has not written its details yet)"
    command = f"`instructmining {holder['command']}`" if holder.get("command") else "a process"
    return (
        f"{command} (pid {holder['pid']} on {holder.get('host', '?')}, "
        f"started {holder.get('started', '?')})"
    )


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        doc = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


@contextmanager
def study_lock(folder: str | Path, command: str) -> Iterator[None]:
    """Hold the study's lock for the `with` block; StudyLockedError if someone else holds it.

    `command` (e.g. "study run") is written into the lock file for the message a
    refused process shows.
    """
    path = Path(folder)
    key = (str(path.resolve()), threading.get_ident())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputNotWritableError(
            f"{path}: cannot create its lock file {LOCK_FILE} ({exc.strerror or exc}); "
            "the study folder must be writable"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyLockedError(
                f"{path}: locked by {_describe(_read_holder(fd))}; wait for it to finish "
                "or stop it, then run this again"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the lock


def holds_study_lock(
    command: str, *, planning: bool = False
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator: the function (whose first argument is a study folder) runs holding its lock.

    The folder is checked to be a study first, so that a wrong path gets that
    message; with `planning` (`study plan`) it need not be one yet, and a folder
    that does not exist yet is not locked.
    """

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        first = next(iter(inspect.signature(func).parameters))

        @functools.wraps(func)
        def locked(*args: P.args, **kwargs: P.kwargs) -> T:
            from instructmining.experiments.study import Study

            folder = Path(args[0] if args else kwargs[first])  # type: ignore[arg-type]
            if planning:
                if not folder.is_dir():
                    return func(*args, **kwargs)
            else:
                folder = Study(folder).path
            with study_lock(folder, command):
                return func(*args, **kwargs)

        return locked

    return decorate
