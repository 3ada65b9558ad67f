"""The results store: one SQLite row per finished or failed candidate and configuration.

A store object is a view of one configuration (`config`: a hash of how the
candidates were trained: base model, hyper-parameters, template, seed), so a
study run again with other settings records its results beside the first
ones instead of mixing with them; `configs()` lists what the file holds.

SQLite in WAL mode with synchronous=FULL: every result is one committed
transaction, so a process killed at any moment (kill -9 included) leaves either
the whole row or none of it, and the next run continues from what is there.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructmining.errors import CorruptFileError, InstructMiningError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    config TEXT NOT NULL,
    candidate_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    row TEXT,
    error TEXT,
    wall_s REAL,
    finished REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (config, candidate_id)
)
"""
# the base model evaluated before any finetuning, once per configuration (`study baseline`)
_BASELINES = """
CREATE TABLE IF NOT EXISTS baselines (
    config TEXT PRIMARY KEY,
    row TEXT NOT NULL,
    finished REAL NOT NULL
)
"""
# version 1 files: one table keyed by candidate alone; their rows move to config ""
_MIGRATE = """
INSERT OR IGNORE INTO results
SELECT '', candidate_id, status, row, error, wall_s, finished, attempts FROM runs
"""


@dataclass(frozen=True)
class Entry:
    """One stored outcome."""

    candidate_id: str
    status: str
    row: dict[str, Any] | None
    error: str | None
    wall_s: float | None
    finished: float
    attempts: int


def _json_value(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ResultsStore:
    """Append/replace outcomes by candidate id; safe against a crash at any point."""

    def __init__(self, path: str | Path, config: str | None = None) -> None:
        """`config` None: the configuration with the most finished rows (else "")."""
        self.path = Path(path)
        self._config = config

    @property
    def config(self) -> str:
        """The configuration this view reads and writes."""
        if self._config is None:
            configs = self.configs()
            return max(configs, key=lambda c: configs[c][0]) if configs else ""
        return self._config

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection; SQLite's failures become one-line errors naming the file and the fix."""
        try:
            con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                self._prepare(con)
                yield con
            finally:
                con.close()
        except sqlite3.OperationalError as exc:  # cannot open, read-only, locked too long
            raise InstructMiningError(
                f"{self.path}: cannot use the results store ({exc})"
            ) from None
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # a bad statement, not a bad file
                raise
            raise CorruptFileError(
                f"{self.path}: the results store is corrupt ({exc}); move it aside or delete it "
                "(the results recorded in it are lost) and run again"
            ) from None

    @staticmethod
    def _prepare(con: sqlite3.Connection) -> None:
        """WAL, full sync, the table; version 1 rows moved to configuration ""."""
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute(_SCHEMA)
        con.execute(_BASELINES)
        old = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='runs'"
        ).fetchone()
        if old:
            con.execute("BEGIN IMMEDIATE")
            con.execute(_MIGRATE)
            con.execute("DROP TABLE runs")
            con.execute("COMMIT")

    def _put(self, candidate_id: str, status: str, row: Any, error: Any, wall_s: Any) -> None:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            prev = con.execute(
                "SELECT attempts FROM results WHERE config = ? AND candidate_id = ?",
                (self.config, candidate_id),
            ).fetchone()
            con.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.config,
                    candidate_id,
                    status,
                    row,
                    error,
                    wall_s,
                    time.time(),
                    (prev[0] + 1) if prev else 1,
                ),
            )
            con.execute("COMMIT")

    def record_done(self, candidate_id: str, row: Mapping[str, Any]) -> None:
        """Store a finished candidate's row in one transaction (replacing an older outcome)."""
        clean = {k: _json_value(v) for k, v in row.items()}
        self._put(
            candidate_id, "done", json.dumps(clean, ensure_ascii=False), None, clean.get("wall_s")
        )

    def record_failed(self, candidate_id: str, error: str, wall_s: float | None = None) -> None:
        """Store a failed candidate with its error message."""
        self._put(candidate_id, "failed", None, error, wall_s)

    def record_baseline(self, row: Mapping[str, Any]) -> None:
        """Store this configuration's untrained-base evaluation (replacing an older one)."""
        clean = {k: _json_value(v) for k, v in row.items()}
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO baselines VALUES (?, ?, ?)",
                (self.config, json.dumps(clean, ensure_ascii=False), time.time()),
            )

    def baseline(self) -> dict[str, Any] | None:
        """This configuration's untrained-base evaluation, if `study baseline` recorded one."""
        if not self.path.exists():
            return None
        with self._connect() as con:
            got = con.execute(
                "SELECT row FROM baselines WHERE config = ?", (self.config,)
            ).fetchone()
        return json.loads(got[0]) if got else None

    def configs(self) -> dict[str, tuple[int, int]]:
        """Every configuration in the file: (done, failed) counts."""
        if not self.path.exists():
            return {}
        with self._connect() as con:
            rows = con.execute(
                "SELECT config, SUM(status = 'done'), SUM(status = 'failed') FROM results "
                "GROUP BY config ORDER BY MIN(finished)"
            ).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def entries(self) -> dict[str, Entry]:
        """Every stored outcome of this configuration by candidate id."""
        if not self.path.exists():
            return {}
        with self._connect() as con:
            rows = con.execute(
                "SELECT candidate_id, status, row, error, wall_s, finished, attempts FROM results "
                "WHERE config = ?",
                (self.config,),
            ).fetchall()
        return {
            r[0]: Entry(r[0], r[1], json.loads(r[2]) if r[2] else None, r[3], r[4], r[5], r[6])
            for r in rows
        }

    def table(self) -> Any:
        """The finished candidates as a DataFrame, one row each (ordered by finish time)."""
        import pandas as pd

        done = sorted(
            (e for e in self.entries().values() if e.status == "done"), key=lambda e: e.finished
        )
        return pd.DataFrame.from_records([e.row for e in done if e.row is not None])
