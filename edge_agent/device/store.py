"""The on-device state store: SQLite in WAL mode (one file, ``<state_dir>/state.sqlite3``).

Holds what must survive a crash or a power cut:

- ``outbox``: QoS 1 publications the broker has not acknowledged yet (store-and-forward);
- ``sessions``: initialized MCP client sessions with their resource subscriptions and log level,
  so a cloud client keeps calling across an agent restart without a new ``initialize``;
- ``counters``: drop counters by reason (they are reported in ``device://link``);
- ``reply_log``: the durable reply cache of non-read-only tool calls, one row per (mcp-client-id,
  request id), keyed by a growing row number (:mod:`edge_agent.device.journal`).

With ``write_behind`` (the default) writes never block the caller (the asyncio thread): they
go, in call order, to one writer thread that applies whatever has queued up in one
transaction: **group commit**. The writer waits up to ``commit_window`` seconds (default
0.2) after the first queued write before it commits, unless a caller needs the data on disk
now (:meth:`Store.after_write` with ``urgent``, :meth:`Store.flush`, :meth:`Store.close`). An
outbox row acknowledged by the broker before its batch reached the file is neither written
nor deleted: at a steady rate, what the broker acknowledges within the window costs the SD
card nothing. Outbox ids are handed out at once by the caller's thread, so they increase
strictly; an id that went out on the wire before its row was committed is covered by a
reservation written well ahead (:meth:`Store.outbox_sent`), so ids are never reused, across
a crash too (after a crash the sequence jumps past the reservation; after a clean stop it
continues where it was). Reads (``outbox_rows``, ``outbox_stats``, ``outbox_oldest``,
``sessions``, ``counters``, ``replies``) first wait until every queued write is in the file:
they run at start, at a reconnect and when the outbox is full, not per message.

Durability: :meth:`Store.close` (a clean stop) writes everything queued. A crash (SIGKILL, a
power cut) loses what was queued and not yet committed: at most the last ``commit_window``
seconds of writes (plus, after a power cut with ``synchronous=NORMAL``, the transactions the
OS had not written yet; ``FULL`` fsyncs every commit). Whoever must not go on before its
write is on disk waits for it with :meth:`Store.after_write` (the MQTT layer acknowledges a
request to the broker only after the writes its handling queued are committed);
``write_behind=False`` writes on the caller's thread instead (tests, tools).
WAL mode with 1 KiB pages for a new file (a commit of one small row appends about 2 KiB to the
WAL instead of 8), the WAL checkpointed every 256 pages and truncated to 1 MiB.

The file is created at the first write; a device whose link never dropped (QoS 0 telemetry,
``durable_outbox`` off, no persisted sessions) never creates it, nor loads ``sqlite3``.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from edge_agent.mqtt.outbox import OutboxRow  # the row shape the MQTT layer defines

if TYPE_CHECKING:
    import sqlite3

log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS reply_log (
    n INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    reply TEXT,
    created REAL NOT NULL,
    seq INTEGER
);
"""
# ``reply_log`` is keyed by a row number that only grows (the journal looks entries up by
# (client id, request id) in memory): a new reply is appended to the table's rightmost leaf, one
# 1 KiB page in the WAL per commit, where a table keyed by (client id, request id) inserted at
# random places and split and rebalanced three leaves and their parent (4 pages) every few
# commits. A file written before it has a ``replies`` table: moved into ``reply_log`` at open.
MIGRATE_REPLIES = """
INSERT INTO reply_log (client_id, request_id, fingerprint, reply, created, seq)
    SELECT client_id, request_id, fingerprint, reply, created, seq FROM replies ORDER BY created;
DROP TABLE replies;
"""

COMMIT_WINDOW = 0.2
"""Seconds the writer collects writes before one commit (group commit)."""

SEQ_RESERVE = 4096
"""Outbox ids reserved on disk ahead of the last one sent (see :meth:`Store.outbox_sent`)."""

MAX_BATCH = 2000
"""A batch this long is committed without waiting for the rest of the window."""

LAZY_WINDOW = 10.0
"""Seconds a queue of nothing but deletes may wait for a commit (losing one in a crash only
sends an acknowledged message again, which receivers drop by its sequence number)."""

CANCELABLE = frozenset({"outbox_add", "count"})
"""Writes an urgent commit leaves for the window (an outbox row the broker acknowledges within
it is never written); :meth:`Store.after_write` does not wait for them."""

LAZY = frozenset({"outbox_delete", "reply_delete"})
"""Writes that alone never start a commit (see :data:`LAZY_WINDOW`)."""


WRITE_ATTEMPTS = 3  # a batch the writer cannot commit is retried (0.5 s apart), then logged as lost


class Store:
    """SQLite state store. ``path=":memory:"`` for a throw-away store.

    Thread use: write methods are called from one thread (the asyncio loop's); with
    ``write_behind`` they return at once and one writer thread owns the file's writes, without
    it they return once committed. See the module docstring.

    Raises:
        sqlite3.Error: an existing file cannot be opened or is not a database (at construction).
    """

    def __init__(self, path: str, *, synchronous: str = "NORMAL", write_behind: bool = True,
                 commit_window: float = COMMIT_WINDOW):
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.synchronous = synchronous if synchronous in ("NORMAL", "FULL", "OFF") else "NORMAL"
        self.write_behind = write_behind
        self.commit_window = max(0.0, commit_window)
        self.commits = 0  # transactions committed (group commits)
        self.write_errors = 0  # batches the writer could not commit (each logged)
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()  # one user of the connection at a time
        self._cond = threading.Condition()  # guards the queue, _busy and _closed
        self._queue: collections.deque[tuple[str, tuple[Any, ...]]] = collections.deque()
        self._busy = False
        self._urgent = False  # commit what someone waits for without waiting for the window
        self._everything = False  # commit all that is queued now (flush)
        self._first_queued = 0.0  # monotonic time the oldest queued significant write was queued
        self._first_lazy = 0.0  # monotonic time the oldest queued write was queued
        self._significant = 0  # queued writes other than LAZY ones
        self._pinned = 0  # queued or being written, not CANCELABLE nor LAZY: what after_write waits for
        self._closed = False
        self._writer: threading.Thread | None = None
        self._last_id = 0
        self._reserved = 0  # outbox ids up to this are reserved on disk (queued, at least)
        self._reply_n = 0  # the last reply_log row number handed out
        if path != ":memory:" and os.path.exists(path):
            with self._db_lock:
                db = self._open()
                self._last_id = self._reserved = self._last_id_on_disk(db)
                self._reply_n = int(db.execute("SELECT COALESCE(MAX(n), 0) FROM reply_log").fetchone()[0])

    # ------------------------------------------------------------------ connection, writer
    def _open(self) -> sqlite3.Connection:
        """The connection (opened, and the schema made, on first use). Call with ``_db_lock``."""
        if self._db is None:
            import sqlite3

            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA page_size=1024")  # only for a new file (before WAL mode is set)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA wal_autocheckpoint=256")
            db.execute("PRAGMA journal_size_limit=1048576")
            db.executescript(SCHEMA)
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'replies'").fetchone():
                db.executescript("BEGIN;" + MIGRATE_REPLIES + "COMMIT;")
            self._db = db
        return self._db

    @property
    def db(self) -> sqlite3.Connection:
        """The SQLite connection, after every queued write (for inspection; not thread-safe)."""
        self.flush()
        with self._db_lock:
            return self._open()

    @staticmethod
    def _last_id_on_disk(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        top = db.execute("SELECT MAX(id) FROM outbox").fetchone()
        return max(int(row[0]) if row else 0, int(top[0] or 0))

    def after_write(self, callback: Callable[[], Any], *, urgent: bool = False) -> None:
        """Call ``callback()`` once every write queued before this call is committed: from the
        writer thread (hand it to the loop with ``call_soon_threadsafe``), or at once on this
        thread without write-behind, when nothing is queued, or after :meth:`close`. A batch the
        writer gives up on (logged) still calls its callbacks. ``urgent``: commit now instead of
        at the end of the commit window. This is how a sender can make "on disk before it is
        acknowledged" hold without waiting on the loop."""
        with self._cond:
            if self.write_behind and not self._closed and self._pinned:
                if not self._significant:
                    self._first_queued = time.monotonic()
                self._significant += 1
                self._queue.append(("callback", (callback,)))
                if urgent:
                    self._urgent = True
                self._cond.notify_all()
                return
        callback()

    def _write(self, op: str, args: tuple[Any, ...]) -> None:
        if not self.write_behind:
            if self._closed:
                raise RuntimeError("store closed")
            self._apply([(op, args)])  # on the caller's thread, committed when this returns
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("store closed")
            if op not in LAZY and not self._significant:
                self._first_queued = time.monotonic()
            if op not in LAZY:
                self._significant += 1
            if op not in LAZY and op not in CANCELABLE:
                self._pinned += 1
            if not self._queue:
                self._first_lazy = time.monotonic()
            self._queue.append((op, args))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="edge-agent-store", daemon=True)
                self._writer.start()
            self._cond.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                # group commit: let the window fill, unless someone waits for the disk; a queue of
                # nothing but deletes (acknowledged rows) waits for the next commit, LAZY_WINDOW at most
                while not (self._closed or self._urgent or self._everything) and len(self._queue) < MAX_BATCH:
                    end = (self._first_queued + self.commit_window if self._significant
                           else self._first_lazy + LAZY_WINDOW)
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                queued = list(self._queue)
                if self._urgent and not (self._closed or self._everything):
                    # only what someone waits for: the outbox rows the broker may acknowledge
                    # within the window stay queued (and then cost nothing)
                    batch = [item for item in queued if item[0] not in CANCELABLE and item[0] not in LAZY]
                    rest = [item for item in queued if item[0] in CANCELABLE or item[0] in LAZY]
                else:
                    # a row added and acknowledged within the window is dropped both ways, here;
                    # deletes alone never make a commit before LAZY_WINDOW
                    added = {args[0] for op, args in queued if op in ("outbox_add", "outbox_add_pinned")}
                    gone = added & {args[0] for op, args in queued if op == "outbox_delete"}
                    if gone:
                        queued = [item for item in queued
                                  if not (item[0] in ("outbox_add", "outbox_add_pinned", "outbox_delete")
                                          and item[1][0] in gone)]
                    lazy_due = time.monotonic() - self._first_lazy >= LAZY_WINDOW
                    if any(op not in LAZY and op != "callback" for op, _ in queued) or lazy_due \
                            or self._closed or self._everything:
                        batch, rest = queued, []
                    else:
                        batch = [item for item in queued if item[0] == "callback"]
                        rest = [item for item in queued if item[0] != "callback"]
                before = list(self._queue)
                self._queue.clear()
                self._queue.extend(rest)
                done_pinned = _pinned_count(before) - _pinned_count(rest)
                done_significant = sum(op not in LAZY for op, _ in before) - sum(op not in LAZY for op, _ in rest)
                self._significant -= done_significant
                if rest and any(op not in LAZY for op, _ in rest):
                    self._first_queued = time.monotonic()
                if not rest:
                    self._first_lazy = 0.0
                self._urgent = self._everything = False
                self._busy = True
            callbacks = [args[0] for op, args in batch if op == "callback"]
            batch = [item for item in batch if item[0] != "callback"]
            try:
                for attempt in range(WRITE_ATTEMPTS if batch else 0):
                    try:
                        self._apply(batch)
                        break
                    except Exception as exc:  # the writer must survive a locked or full disk, a broken file
                        if attempt + 1 < WRITE_ATTEMPTS:
                            log.warning("state store %s: write failed (%s), retrying", self.path, exc)
                            time.sleep(0.5)
                            continue
                        self.write_errors += 1
                        log.error("state store %s: %d write(s) lost: %s: %s", self.path, len(batch),
                                  type(exc).__name__, exc)
                for callback in callbacks:
                    try:
                        callback()
                    except Exception:  # a caller's bug must not stop the writer
                        log.exception("state store %s: after_write callback failed", self.path)
            finally:
                with self._cond:
                    self._pinned -= done_pinned
                    self._busy = False
                    self._cond.notify_all()

    def _apply(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        """One transaction for ``batch``, in order; an outbox row added and deleted within the
        batch is skipped both ways (it was acknowledged before it reached the file)."""
        added = {args[0] for op, args in batch if op in ("outbox_add", "outbox_add_pinned")}
        gone = added & {args[0] for op, args in batch if op == "outbox_delete"}
        with self._db_lock:
            db = self._open()
            db.execute("BEGIN")
            try:
                for op, args in batch:
                    if op in ("outbox_add", "outbox_add_pinned", "outbox_delete") and args[0] in gone:
                        continue
                    if db.execute(_SQL[op], args).rowcount == 0 and op in ("seq_reserve", "seq_exact"):
                        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", args)
                if gone:  # ids on the wire are never reused: keep the sequence past them
                    top = max(gone)
                    if db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'outbox'",
                                  (top,)).rowcount == 0:
                        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (top,))
                db.execute("COMMIT")
                self.commits += 1
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write queued so far is in the file (committed now, not at the end
        of the window). False on ``timeout`` (s)."""
        with self._cond:
            if self._queue:
                self._everything = True
                self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def _read(self, sql: str, args: Any = ()) -> list[Any]:
        self.flush()
        with self._db_lock:
            if self._db is None and self.path != ":memory:" and not os.path.exists(self.path):
                return []  # never written: nothing to read, no file to create
            return self._open().execute(sql, args).fetchall()

    def close(self) -> None:
        """Write everything queued, stop the writer, close the file. Blocks until done. The
        outbox id sequence is left where it is (no jump at the next start)."""
        if self._reserved > self._last_id and not self._closed:
            self._write("seq_exact", (self._last_id,))
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ------------------------------------------------------------------ outbox
    def outbox_add(self, topic: str, payload: bytes, *, qos: int, retain: bool, kind: str,
                   content_type: str | None = None, expires: float | None = None, pinned: bool = False) -> int:
        """Store a publication; returns its id (strictly increasing, never reused) at once.
        ``pinned``: :meth:`after_write` waits for this row too (it goes out only once on disk)."""
        self._last_id += 1
        row_id = self._last_id
        self._write("outbox_add_pinned" if pinned else "outbox_add",
                    (row_id, topic, payload, qos, int(retain), kind, content_type, time.time(), expires))
        return row_id

    def outbox_delete(self, row_id: int) -> None:
        self._write("outbox_delete", (row_id,))

    def outbox_next_id(self) -> int:
        """An outbox id (a sequence number) for a message sent without a row."""
        self._last_id += 1
        return self._last_id

    def outbox_sent(self, row_id: int) -> None:
        """Row ``row_id`` goes out on the wire (maybe before its row is committed): keep the id
        sequence reserved on disk :data:`SEQ_RESERVE` ids ahead, so a crash that loses the
        row cannot hand its id (``EDGE-AGENT-SEQ``, which receivers deduplicate by) to another
        message. Ids that never went out are reused after a crash; that is harmless."""
        if row_id > self._reserved - SEQ_RESERVE // 2:
            self._reserved = max(self._reserved, row_id) + SEQ_RESERVE
            self._write("seq_reserve", (self._reserved,))

    def outbox_rows(self, after: int = 0, limit: int = 1000) -> list[OutboxRow]:
        """Rows with ``id > after``, oldest first."""
        rows = self._read("SELECT id, topic, payload, qos, retain, kind, content_type, created, expires FROM outbox"
                          " WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6], r[7], r[8]) for r in rows]

    def outbox_stats(self) -> tuple[int, int]:
        """``(rows, bytes)`` in the outbox."""
        rows = self._read("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(topic)), 0) FROM outbox")
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def outbox_oldest(self, kind: str, exclude: Any = ()) -> OutboxRow | None:
        """The oldest row of ``kind`` whose id is not in ``exclude``."""
        ids = sorted(int(i) for i in exclude)
        sql = "SELECT id, topic, payload, qos, retain, kind, content_type, created, expires FROM outbox WHERE kind = ?"
        if ids:
            sql += f" AND id NOT IN ({','.join('?' * len(ids))})"
        rows = self._read(sql + " ORDER BY id LIMIT 1", [kind, *ids])
        if not rows:
            return None
        r = rows[0]
        return OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6], r[7], r[8])

    def last_id(self) -> int:
        """The last outbox id handed out (0 if none ever)."""
        return self._last_id

    # ------------------------------------------------------------------ sessions
    def session_put(self, client_id: str, data: dict[str, Any]) -> None:
        self._write("session_put", (client_id, json.dumps(data), time.time()))

    def session_delete(self, client_id: str) -> None:
        self._write("session_delete", (client_id,))

    def sessions(self, max_age: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Stored sessions; those older than ``max_age`` seconds are deleted, not returned."""
        cutoff = time.time() - max_age if max_age is not None else None
        for client_id, data, updated in self._read("SELECT client_id, data, updated FROM sessions ORDER BY updated"):
            if cutoff is not None and updated < cutoff:
                self.session_delete(client_id)
                continue
            try:
                yield client_id, json.loads(data)
            except ValueError:
                self.session_delete(client_id)

    # ------------------------------------------------------------------ durable reply cache
    def reply_put(self, client_id: str, request_id: str, fingerprint: str, reply: str | None,
                  created: float, seq: int | None = None, *, n: int | None = None) -> int:
        """Store the reply to ``request_id`` (JSON text of the id) of ``client_id``; ``reply``
        None: the request started and has no reply yet; ``seq``: the EDGE-AGENT-SEQ the reply
        went out with; ``fingerprint``: hex digest of the request. ``n``: the row to replace
        (None: a new row, appended). Returns the row number (for :meth:`reply_delete`)."""
        if n is None:
            self._reply_n += 1
            n = self._reply_n
        try:
            digest: str | bytes = bytes.fromhex(fingerprint)
        except ValueError:
            digest = fingerprint
        self._write("reply_put", (n, client_id, request_id, digest, reply, created, seq))
        return n

    def reply_delete(self, n: int) -> None:
        """Delete reply row ``n`` (with the next commit: a delete alone never starts one)."""
        self._write("reply_delete", (n,))

    def replies(self) -> list[tuple[str, str, str, str | None, float, int | None, int]]:
        """Every stored reply ``(client_id, request_id, fingerprint (hex), reply, created, seq, n)``,
        oldest first."""
        rows = self._read("SELECT client_id, request_id, fingerprint, reply, created, seq, n FROM reply_log"
                          " ORDER BY created, n")
        return [(r[0], r[1], r[2].hex() if isinstance(r[2], bytes) else r[2], r[3], r[4], r[5], r[6])
                for r in rows]

    # ------------------------------------------------------------------ counters
    def count(self, name: str, by: int = 1) -> None:
        self._write("count", (name, by))

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._read("SELECT name, value FROM counters ORDER BY name")}


def _pinned_count(items: list[tuple[str, tuple[Any, ...]]]) -> int:
    return sum(op not in LAZY and op not in CANCELABLE and op != "callback" for op, _ in items)


_SQL = {
    "outbox_add": "INSERT INTO outbox (id, topic, payload, qos, retain, kind, content_type, created, expires)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "outbox_delete": "DELETE FROM outbox WHERE id = ?",
    "outbox_add_pinned": "INSERT INTO outbox (id, topic, payload, qos, retain, kind, content_type, created, expires)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "session_put": "INSERT INTO sessions (client_id, data, updated) VALUES (?, ?, ?)"
                   " ON CONFLICT(client_id) DO UPDATE SET data = excluded.data, updated = excluded.updated",
    "session_delete": "DELETE FROM sessions WHERE client_id = ?",
    "reply_put": "INSERT OR REPLACE INTO reply_log (n, client_id, request_id, fingerprint, reply, created, seq)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)",
    "reply_delete": "DELETE FROM reply_log WHERE n = ?",
    # the outbox id sequence: raised (reserve) or set (exact, at a clean close); inserted if missing
    "seq_reserve": "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'outbox'",
    "seq_exact": "UPDATE sqlite_sequence SET seq = MAX(?, (SELECT COALESCE(MAX(id), 0) FROM outbox))"
                 " WHERE name = 'outbox'",
    "count": "INSERT INTO counters (name, value) VALUES (?, ?)"
             " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
}
