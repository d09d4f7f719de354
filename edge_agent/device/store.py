"""The on-device state store: SQLite in WAL mode (one file, ``<state_dir>/state.sqlite3``).

Holds what must survive a crash or a power cut:

- ``outbox``: QoS 1 publications the broker has not acknowledged yet (store-and-forward);
- ``sessions``: initialized MCP client sessions with their resource subscriptions and log level,
  so a cloud client keeps calling across an agent restart without a new ``initialize``;
- ``counters``: drop counters by reason (they are reported in ``device://link``).

Used from the asyncio thread only (one connection). ``synchronous=NORMAL`` in WAL mode: a
power cut may lose the last transactions but never corrupts the file; ``FULL`` (config
``store.synchronous``) fsyncs every commit, slower on SD cards.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL,
    content_type TEXT,
    created REAL NOT NULL,
    expires REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    client_id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class OutboxRow:
    """One stored publication. ``id`` increases strictly (it is also the message's sequence
    number on the wire); ``expires`` is Unix time (s) or None."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    content_type: str | None
    created: float
    expires: float | None

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic)


class Store:
    """SQLite state store. ``path=":memory:"`` for a throw-away store.

    Raises:
        sqlite3.Error: the file cannot be opened or is not a database.
    """

    def __init__(self, path: str, *, synchronous: str = "NORMAL"):
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous if synchronous in ('NORMAL', 'FULL', 'OFF') else 'NORMAL'}")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ outbox
    def outbox_add(self, topic: str, payload: bytes, *, qos: int, retain: bool, kind: str,
                   content_type: str | None = None, expires: float | None = None) -> int:
        """Store a publication; returns its id (strictly increasing, never reused)."""
        cur = self.db.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, kind, content_type, created, expires)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (topic, payload, qos, int(retain), kind, content_type, time.time(), expires))
        return int(cur.lastrowid)

    def outbox_delete(self, row_id: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def outbox_rows(self, after: int = 0, limit: int = 1000) -> list[OutboxRow]:
        """Rows with ``id > after``, oldest first."""
        cur = self.db.execute(
            "SELECT id, topic, payload, qos, retain, kind, content_type, created, expires FROM outbox"
            " WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6], r[7], r[8]) for r in cur]

    def outbox_stats(self) -> tuple[int, int]:
        """``(rows, bytes)`` in the outbox."""
        n, size = self.db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(topic)), 0) FROM outbox").fetchone()
        return int(n), int(size)

    def outbox_oldest(self, kind: str, exclude: Any = ()) -> OutboxRow | None:
        """The oldest row of ``kind`` whose id is not in ``exclude``."""
        ids = sorted(int(i) for i in exclude)
        sql = "SELECT id, topic, payload, qos, retain, kind, content_type, created, expires FROM outbox WHERE kind = ?"
        if ids:
            sql += f" AND id NOT IN ({','.join('?' * len(ids))})"
        r = self.db.execute(sql + " ORDER BY id LIMIT 1", [kind, *ids]).fetchone()
        return OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6], r[7], r[8]) if r else None

    def last_id(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ sessions
    def session_put(self, client_id: str, data: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO sessions (client_id, data, updated) VALUES (?, ?, ?)"
                        " ON CONFLICT(client_id) DO UPDATE SET data = excluded.data, updated = excluded.updated",
                        (client_id, json.dumps(data), time.time()))

    def session_delete(self, client_id: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE client_id = ?", (client_id,))

    def sessions(self, max_age: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Stored sessions; those older than ``max_age`` seconds are deleted, not returned."""
        if max_age is not None:
            self.db.execute("DELETE FROM sessions WHERE updated < ?", (time.time() - max_age,))
        for client_id, data in self.db.execute("SELECT client_id, data FROM sessions ORDER BY updated").fetchall():
            try:
                yield client_id, json.loads(data)
            except ValueError:
                self.session_delete(client_id)

    # ------------------------------------------------------------------ counters
    def count(self, name: str, by: int = 1) -> None:
        self.db.execute("INSERT INTO counters (name, value) VALUES (?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.db.execute("SELECT name, value FROM counters ORDER BY name")}
