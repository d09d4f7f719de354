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

import collections
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


class WaitingRows:
    """Stored rows waiting for a slot of paho's in-flight window, served **round-robin by
    topic** (each client's RPC topic, the capability topic), oldest first within a topic.

    In arrival order, one client that pipelines would put its answers ahead of every other
    client's in this queue (the window is shared: the broker's Receive Maximum); by topic, a
    quiet client's answer goes out at the next free slot whatever another client has queued,
    and each topic keeps its own order (issue 12 item 7). ``rpc(client_id)``: that client's RPC
    rows waiting here (counted against its in-flight bound, see ``MqttServerTransport.backlog``).
    """

    def __init__(self) -> None:
        self._by_topic: dict[str, collections.OrderedDict[int, StoredRow]] = {}
        self._turns: collections.deque[str] = collections.deque()  # topics with rows, next first
        self._topic_of: dict[int, str] = {}  # row id -> its topic
        self._rpc: dict[str, int] = {}  # mcp-client-id -> its RPC rows here

    def __len__(self) -> int:
        return len(self._topic_of)

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._topic_of

    def rpc(self, client_id: str) -> int:
        return self._rpc.get(client_id, 0)

    def _count(self, topic: str, by: int) -> None:
        if topic.startswith("$mcp-rpc/"):
            client_id = topic.split("/", 2)[1]
            n = self._rpc.get(client_id, 0) + by
            if n > 0:
                self._rpc[client_id] = n
            else:
                self._rpc.pop(client_id, None)

    def add(self, row: StoredRow) -> None:
        """Queue ``row`` (again: replaced in place)."""
        known = self._topic_of.get(row.id)
        if known is not None:
            self._by_topic[known][row.id] = row
            return
        rows = self._by_topic.get(row.topic)
        if rows is None:
            rows = self._by_topic[row.topic] = collections.OrderedDict()
            self._turns.append(row.topic)
        rows[row.id] = row
        self._topic_of[row.id] = row.topic
        self._count(row.topic, 1)

    def pop_next(self) -> StoredRow:
        """The oldest row of the topic whose turn it is (the topic then goes last).

        Raises:
            IndexError: nothing waits.
        """
        topic = self._turns.popleft()
        rows = self._by_topic[topic]
        _, row = rows.popitem(last=False)
        if rows:
            self._turns.append(topic)
        else:
            del self._by_topic[topic]
        del self._topic_of[row.id]
        self._count(topic, -1)
        return row

    def discard(self, row_id: int) -> StoredRow | None:
        """Remove row ``row_id`` (the outbox dropped it); the row, or None if it was not here."""
        topic = self._topic_of.pop(row_id, None)
        if topic is None:
            return None
        rows = self._by_topic[topic]
        row = rows.pop(row_id)
        if not rows:
            del self._by_topic[topic]
            self._turns.remove(topic)
        self._count(topic, -1)
        return row

    def clear(self) -> None:
        self._by_topic.clear()
        self._turns.clear()
        self._topic_of.clear()
        self._rpc.clear()
