"""PUBACKs in the order the PUBLISHes came, though the messages are handled out of order.

MQTT 5.0 §4.6 [MQTT-4.6.0-2]: a receiver "MUST send PUBACK packets in the order in which the
corresponding PUBLISH packets were received". With ``ack_when_handled`` the device acknowledges a
request only once it is handled, and requests finish in any order (a ping before a slow tool
call received earlier); :class:`OrderedAcks` holds each PUBACK until every earlier message of the
same connection is acknowledged. A slow call therefore holds the PUBACKs of what came after it on
its connection (not their handling or answers): the CONNECT Receive Maximum (``unreliable``: 1024)
is how many the broker hands over meanwhile.
"""

from __future__ import annotations

import collections
from typing import Any, Callable


class OrderedAcks:
    """One connection's pending PUBACKs, oldest first. ``send(mid, qos)`` writes one PUBACK;
    ``flush()`` is called once after a run of them. :meth:`reset` at every (re)connect: what the
    old connection held is the broker's to send again."""

    def __init__(self, send: Callable[[int, int], Any], flush: Callable[[], None]):
        self._send, self._flush = send, flush
        self._queue: collections.deque[list] = collections.deque()  # [mid, qos, done]
        self.epoch = 0

    def reset(self, epoch: int) -> None:
        self._queue = collections.deque()
        self.epoch = epoch

    def add(self, mid: int, qos: int) -> Callable[[], None]:
        """Register message ``mid`` (in the order received); returns its ack: call it once the
        message is handled (more calls do nothing)."""
        entry = [mid, qos, False]
        self._queue.append(entry)
        queue = self._queue

        def ack() -> None:
            if entry[2]:
                return
            entry[2] = True
            if queue is not self._queue:
                return  # (a connection that is gone)
            sent = False
            while queue and queue[0][2]:
                head = queue.popleft()
                self._send(head[0], head[1])
                sent = True
            if sent:
                self._flush()
        return ack

    def __len__(self) -> int:
        return len(self._queue)
