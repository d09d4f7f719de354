"""Store-and-forward for QoS 1 publications, bounded, with an explicit drop policy.

Every QoS 1 publication is written to the store's ``outbox`` table before it is handed to
paho, and deleted when the broker's PUBACK arrives. While the link is down new rows wait in
the table; paho itself re-sends what it had in flight when the link returns. After an agent
restart every row still in the table is sent again, oldest first. The row id is the
message's sequence number on the wire (user property ``EDGE-AGENT-SEQ``), so a receiver can
drop the duplicates that at-least-once delivery produces.

Bounds (count and bytes): when a new row would exceed them, the oldest *telemetry* row is
dropped first (one not yet handed to paho, else one paho holds unacknowledged: what went into
a dead connection counts against the same policy), then the oldest *notification* not in
flight; *responses* are never dropped (a caller is waiting for them), so only responses can
push the outbox past its bounds. A new telemetry row that finds nothing older to drop is
itself dropped. Every drop is counted by reason (``outbox_full_telemetry``,
``outbox_full_notification``, ``expired``). The transport hands paho at most its in-flight
window (``max_inflight``) of rows; the others wait here, where the policy reaches them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

log = logging.getLogger(__name__)

DROP_ORDER = ("telemetry", "notification")


class StoredRow(Protocol):
    """One stored publication as a store returns it (``edge_agent.device.store.OutboxRow`` is one)."""

    @property
    def id(self) -> int: ...
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def qos(self) -> int: ...
    @property
    def retain(self) -> bool: ...
    @property
    def kind(self) -> str: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def expires(self) -> float | None: ...
    @property
    def size(self) -> int: ...


class OutboxStore(Protocol):
    """What the outbox needs of a store: ``edge_agent.device.store.Store`` (SQLite) in the
    agent, :class:`MemoryStore` otherwise. Ids increase strictly and are never reused."""

    def outbox_add(self, topic: str, payload: bytes, *, qos: int, retain: bool, kind: str,
                   content_type: str | None = None, expires: float | None = None, pinned: bool = False) -> int: ...
    def outbox_delete(self, row_id: int) -> None: ...
    def outbox_sent(self, row_id: int) -> None: ...
    def outbox_next_id(self) -> int: ...
    def outbox_rows(self, after: int = 0, limit: int = 1000) -> list[Any]: ...
    def outbox_stats(self) -> tuple[int, int]: ...
    def outbox_oldest(self, kind: str, exclude: Any = ()) -> Any: ...
    def count(self, name: str, by: int = 1) -> None: ...


@dataclass(frozen=True)
class OutboxRow:
    """One stored publication, as :class:`Outbox`, :class:`MemoryStore` and the device's SQLite
    store hand it out. ``id`` increases strictly (it is also the message's sequence number on
    the wire); ``expires``: Unix time (s) or None."""

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


class MemoryStore:
    """An :class:`OutboxStore` in memory: nothing survives the process."""

    def __init__(self) -> None:
        self.rows: dict[int, OutboxRow] = {}
        self.counters: Counter[str] = Counter()
        self._last = 0

    def outbox_add(self, topic: str, payload: bytes, *, qos: int, retain: bool, kind: str,
                   content_type: str | None = None, expires: float | None = None, pinned: bool = False) -> int:
        self._last += 1
        self.rows[self._last] = OutboxRow(self._last, topic, payload, qos, retain, kind, content_type, time.time(),
                                          expires)
        return self._last

    def outbox_delete(self, row_id: int) -> None:
        self.rows.pop(row_id, None)

    def outbox_sent(self, row_id: int) -> None:
        """(Nothing survives a restart: no id to reserve.)"""

    def outbox_next_id(self) -> int:
        self._last += 1
        return self._last

    def outbox_rows(self, after: int = 0, limit: int = 1000) -> list[OutboxRow]:
        return [self.rows[i] for i in sorted(i for i in self.rows if i > after)[:limit]]

    def outbox_stats(self) -> tuple[int, int]:
        return len(self.rows), sum(r.size for r in self.rows.values())

    def outbox_oldest(self, kind: str, exclude: Any = ()) -> OutboxRow | None:
        skip = set(exclude)
        ids = [i for i, r in self.rows.items() if r.kind == kind and i not in skip]
        return self.rows[min(ids)] if ids else None

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] += by


class Outbox:
    """Bounded outbox over an :class:`OutboxStore`."""

    def __init__(self, store: OutboxStore, *, max_messages: int, max_bytes: int):
        self.store = store
        self.max_messages = max(1, max_messages)
        self.max_bytes = max(1, max_bytes)
        self.drops: Counter[str] = Counter()
        self.forgotten: set[int] = set()  # dropped while paho held them: their PUBACK is ignored
        self.last_dropped: list[int] = []  # rows the last add() dropped
        self._count, self._bytes = store.outbox_stats()

    @property
    def depth(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        return self._bytes

    def _drop(self, reason: str, row_id: int, size: int) -> None:
        self.last_dropped.append(row_id)
        self.store.outbox_delete(row_id)
        self._count -= 1
        self._bytes -= size
        self.drops[reason] += 1
        self.store.count(reason)

    def add(self, topic: str, payload: bytes, *, qos: int, retain: bool, kind: str,
            content_type: str | None, expires: float | None, in_flight: Iterable[int] = (),
            pinned: bool = False) -> StoredRow | None:
        """Store a publication, applying the bounds. Returns the row, or None when this
        (telemetry) message was dropped because nothing older could make room."""
        size = len(payload) + len(topic)
        busy = set(in_flight)
        self.last_dropped = []
        while self._count + 1 > self.max_messages or self._bytes + size > self.max_bytes:
            victim = None
            for drop_kind in DROP_ORDER:
                if drop_kind == "notification" and kind == "telemetry":
                    break  # telemetry never pushes out notifications
                victim = self.store.outbox_oldest(drop_kind, busy)
                if victim is None and drop_kind == "telemetry" and busy:
                    victim = self.store.outbox_oldest(drop_kind, ())  # one paho holds (a dead link?)
                    if victim is not None:
                        busy.discard(victim.id)
                        self.forgotten.add(victim.id)
                if victim is not None:
                    break
            if victim is None:
                if kind == "response":
                    break  # responses are never dropped: accept past the bound
                self.drops[f"outbox_full_{kind}"] += 1
                self.store.count(f"outbox_full_{kind}")
                return None
            self._drop(f"outbox_full_{victim.kind}", victim.id, victim.size)
        row_id = self.store.outbox_add(topic, payload, qos=qos, retain=retain, kind=kind,
                                       content_type=content_type, expires=expires, pinned=pinned)
        self._count += 1
        self._bytes += size
        return OutboxRow(row_id, topic, payload, qos, retain, kind, content_type, time.time(), expires)

    def ack(self, row_id: int, size: int) -> None:
        """The broker acknowledged ``row_id``: forget it."""
        if row_id in self.forgotten:  # dropped (and counted) while in flight
            self.forgotten.discard(row_id)
            return
        self.store.outbox_delete(row_id)
        self._count -= 1
        self._bytes -= size

    def pending(self, exclude: Iterable[int] = ()) -> list[StoredRow]:
        """Rows to (re)send, oldest first, without those in ``exclude`` (in flight). Expired
        rows are dropped and counted here."""
        skip = set(exclude)
        now = time.time()
        out: list[StoredRow] = []
        after = 0
        while True:
            rows = self.store.outbox_rows(after)
            if not rows:
                return out
            for row in rows:
                after = row.id
                if row.id in skip:
                    continue
                if row.expires is not None and row.expires <= now:
                    self._drop("expired", row.id, row.size)
                    continue
                out.append(row)
