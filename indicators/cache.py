"""A local store of computed scores, keyed by (indicator configuration, record).

SQLite in write-ahead-log mode: every batch of scores is one transaction, so a
process killed at any moment (kill -9 included) leaves either the whole batch or
none of it, and a rerun recomputes exactly the batches that were not committed.
Readers never block the writer and several processes (workers) can share one
file; writes are serialised by SQLite's lock with a busy timeout. Python ships
sqlite3, so the store needs no extra dependency. Values are stored as their 8
IEEE-754 bytes (SQLite's REAL would turn -0.0 into 0 and NaN into NULL), so
cached and freshly computed outputs are bit-identical. A file SQLite cannot read
(corrupt, or not a database) or a place it cannot write stops with one line
naming the file and the fix, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from instructmining.errors import CorruptFileError, InstructMiningError

CACHE_ENV = "INSTRUCTMINING_CACHE"
DEFAULT_CACHE = Path(".instructmining") / "cache.sqlite"
SCHEMA_VERSION = 2  # 2: values as IEEE-754 bytes
_DOUBLE = struct.Struct("<d")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS configs (
    key TEXT PRIMARY KEY,
    indicator TEXT NOT NULL,
    params TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    key TEXT NOT NULL,
    record TEXT NOT NULL,
    value BLOB NOT NULL,
    truncated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key, record)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vectors (
    key TEXT NOT NULL,
    record TEXT NOT NULL,
    dtype TEXT NOT NULL,
    value BLOB NOT NULL,
    truncated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key, record)
) WITHOUT ROWID;
"""


def default_cache_path() -> Path:
    """`$INSTRUCTMINING_CACHE`, else `./.instructmining/cache.sqlite`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE


P = ParamSpec("P")
T = TypeVar("T")


def _guarded(
    method: Callable[Concatenate[ScoreCache, P], T],
) -> Callable[Concatenate[ScoreCache, P], T]:
    """SQLite and file-system failures of a cache method as one-line errors naming the file."""

    @functools.wraps(method)
    def wrapper(self: ScoreCache, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:  # cannot open, read-only, locked too long
            raise InstructMiningError(
                f"{self.path}: cannot use the score cache ({exc}); pass --cache with a file in a "
                "folder you can write to, or --no-cache"
            ) from None
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # a bad value bound, not a bad file
                raise
            self.close()  # not a database, malformed pages
            raise CorruptFileError(
                f"{self.path}: the score cache is corrupt ({exc}); delete the file (its scores "
                "are computed again) or pass --no-cache"
            ) from None
        except OSError as exc:  # its folder cannot be created
            raise InstructMiningError(
                f"{self.path}: cannot create the score cache ({exc.strerror or exc}); pass "
                "--cache with a file in a folder you can write to, or --no-cache"
            ) from None

    return wrapper


class ScoreCache:
    """Scores by (key, record key) in one SQLite file; one commit per `put`."""

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path).expanduser()
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Set the pragmas, create the tables and check the schema version."""
        # WAL: a commit is durable and atomic without blocking readers; NORMAL sync
        # keeps every committed batch across a process kill (only an OS crash can
        # lose the last transactions, never corrupt the file).
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        if row is None:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise CorruptFileError(
                f"{self.path}: score cache schema {row[0]}, this version reads "
                f"{SCHEMA_VERSION}; delete the file or pass another --cache"
            )

    @_guarded
    def check(self) -> None:
        """Open the file now: a corrupt or unusable cache fails here, before any work."""
        self._connect()

    def close(self) -> None:
        """Close the connection (it reopens on the next call)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_guarded
    def register(self, key: str, indicator: str, params: dict[str, Any]) -> None:
        """Remember which configuration a key stands for (for inspection; idempotent)."""
        self._connect().execute(
            "INSERT OR IGNORE INTO configs VALUES (?, ?, ?, ?)",
            (key, indicator, json.dumps(params, sort_keys=True, default=str), time.time()),
        )

    @_guarded
    def get(self, key: str, records: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, values, truncated mask) for `records` under `key`."""
        n = len(records)
        found = np.zeros(n, dtype=bool)
        values = np.full(n, np.nan)
        truncated = np.zeros(n, dtype=bool)
        if n == 0:
            return found, values, truncated
        position, rows = self._select(
            "SELECT s.record, s.value, s.truncated FROM scores s "
            "JOIN wanted w ON s.record = w.record WHERE s.key = ?",
            key,
            records,
        )
        for record, value, trunc in rows:
            for i in position[record]:
                found[i] = True
                values[i] = _DOUBLE.unpack(value)[0]
                truncated[i] = bool(trunc)
        return found, values, truncated

    @_guarded
    def put(
        self,
        key: str,
        records: Sequence[str],
        values: Iterable[float],
        truncated: Iterable[bool] | None = None,
    ) -> None:
        """Store one batch in a single transaction (all of it or, after a crash, none)."""
        vals = [_DOUBLE.pack(float(v)) for v in values]
        flags = [0] * len(vals) if truncated is None else [int(bool(t)) for t in truncated]
        if not (len(records) == len(vals) == len(flags)):
            raise ValueError("put: records, values and truncated differ in length")
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)",
                zip([key] * len(vals), records, vals, flags, strict=True),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _select(
        self, query: str, key: str, records: Sequence[str]
    ) -> tuple[dict[str, list[int]], list[Any]]:
        """(positions of each record key, rows of `query` joined on a temp table of the keys).

        A temporary table joined on the primary key: one query whatever the number of ids.
        """
        conn = self._connect()
        position: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            position.setdefault(r, []).append(i)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (record TEXT PRIMARY KEY)")
        conn.execute("BEGIN")
        try:
            conn.execute("DELETE FROM wanted")
            conn.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", ((r,) for r in position))
            rows = conn.execute(query, (key,)).fetchall()
            conn.execute("DELETE FROM wanted")
        finally:
            conn.execute("COMMIT")
        return position, rows

    @_guarded
    def get_vectors(
        self, key: str, records: Sequence[str]
    ) -> tuple[np.ndarray, list[np.ndarray | None], np.ndarray]:
        """(found mask, one row or None per record, truncated mask) under `key`.

        Rows are the per-record features of a set-level indicator (an embedding),
        stored in their own dtype, so a cached row equals the computed one bit for bit.
        """
        n = len(records)
        found = np.zeros(n, dtype=bool)
        rows: list[np.ndarray | None] = [None] * n
        truncated = np.zeros(n, dtype=bool)
        if n == 0:
            return found, rows, truncated
        position, got = self._select(
            "SELECT v.record, v.dtype, v.value, v.truncated FROM vectors v "
            "JOIN wanted w ON v.record = w.record WHERE v.key = ?",
            key,
            records,
        )
        for record, dtype, value, trunc in got:
            row = np.frombuffer(value, dtype=np.dtype(dtype))
            for i in position[record]:
                found[i] = True
                rows[i] = row
                truncated[i] = bool(trunc)
        return found, rows, truncated

    @_guarded
    def put_vectors(
        self,
        key: str,
        records: Sequence[str],
        rows: np.ndarray,
        truncated: Iterable[bool] | None = None,
    ) -> None:
        """Store one batch of feature rows (a 2-D array, one row per record) in one transaction."""
        matrix = np.ascontiguousarray(rows)
        if matrix.ndim != 2 or len(matrix) != len(records):
            raise ValueError("put_vectors: expected one row per record")
        flags = [0] * len(records) if truncated is None else [int(bool(t)) for t in truncated]
        dtype = matrix.dtype.str
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)",
                ((key, rec, dtype, matrix[i].tobytes(), flags[i]) for i, rec in enumerate(records)),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @_guarded
    def count_vectors(self, key: str | None = None) -> int:
        """Number of stored feature rows (under `key`, or in all)."""
        conn = self._connect()
        if key is None:
            return int(conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
        return int(conn.execute("SELECT COUNT(*) FROM vectors WHERE key=?", (key,)).fetchone()[0])

    @_guarded
    def count(self, key: str | None = None) -> int:
        """Number of stored scores (under `key`, or in all)."""
        conn = self._connect()
        if key is None:
            return int(conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])
        return int(conn.execute("SELECT COUNT(*) FROM scores WHERE key=?", (key,)).fetchone()[0])

    @_guarded
    def configs(self) -> list[dict[str, Any]]:
        """Every configuration stored: key, indicator, params and number of scores."""
        conn = self._connect()
        rows = conn.execute(
            "SELECT c.key, c.indicator, c.params, COUNT(s.record) FROM configs c "
            "LEFT JOIN scores s ON s.key = c.key GROUP BY c.key ORDER BY c.created"
        ).fetchall()
        return [
            {"key": k, "indicator": name, "params": json.loads(p), "scores": n}
            for k, name, p, n in rows
        ]
