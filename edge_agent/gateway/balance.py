"""Choosing one replica among the server instances that share a server-name. Pure, no I/O.

MCP over MQTT treats instances with the same server-name as interchangeable replicas and lets
the client pick one server-id ("random, round-robin, ..."; spec "Service Discovery"). The
gateway picks when a client session first needs that server-name, and again only when its
replica goes away (sessions are stateful, so a session stays on its replica).

Strategies:

``random``
    uniformly at random.
``round-robin``
    per server-name, the next replica in server-id order.
``least-outstanding``
    the replica with the fewest requests in flight through this gateway; ties (e.g. all idle)
    are broken round-robin, so idle sessions still spread evenly.

Rolling upgrades: replicas announce their catalog digest in presence (``meta.catalogDigest``).
A session is pinned to the digest of the catalog it listed and only balanced over replicas
that announce it (:func:`with_digest`); a session that has not listed yet gets the newest
release (:meth:`Balancer.newest_digest`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

from edge_agent.client.discovery import ServerPresence, catalog_digest, newest_digest

STRATEGIES = ("random", "round-robin", "least-outstanding")
# seconds an initialize waits while another online replica of its server-name could take the
# request instead (gateway --timeout-initialize-failover; fleet.Timeouts.initialize_failover)
INITIALIZE_FAILOVER = 5.0


class Candidate(Protocol):
    server_id: str
    outstanding: int


class Versioned(Protocol):
    server_id: str
    presence: ServerPresence


V = TypeVar("V", bound=Versioned)


def with_digest(replicas: Sequence[V], digest: str | None) -> list[V]:
    """The replicas that announce catalog ``digest`` (all of them when ``digest`` is None)."""
    return [r for r in replicas if digest is None or catalog_digest(r.presence) == digest]


C = TypeVar("C", bound=Candidate)


class Balancer:
    """Picks a replica by ``strategy`` (one of :data:`STRATEGIES`).

    Raises:
        ValueError: an unknown strategy.
    """

    def __init__(self, strategy: str = "least-outstanding", *, rng: random.Random | None = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
        self.strategy = strategy
        self._rng = rng or random.Random()
        self._next: dict[str, int] = {}
        self.first_seen: dict[str, int] = {}  # catalog digest -> order first seen

    def newest_digest(self, replicas: Sequence[Versioned]) -> str | None:
        """The catalog digest of the newest release among ``replicas`` (one server-name): the
        highest presence ``meta.version``, then the digest this balancer saw last
        (:func:`edge_agent.client.discovery.newest_digest`); None if none announces one."""
        return newest_digest([r.presence for r in replicas], self.first_seen)

    def _round_robin(self, server_name: str, ordered: Sequence[C]) -> C:
        i = self._next.get(server_name, 0)
        self._next[server_name] = i + 1
        return ordered[i % len(ordered)]

    def choose(self, server_name: str, replicas: Sequence[C]) -> C:
        """One of ``replicas`` (non-empty) for ``server_name``.

        Raises:
            ValueError: ``replicas`` is empty.
        """
        if not replicas:
            raise ValueError(f"no replica of {server_name} to choose from")
        ordered = sorted(replicas, key=lambda r: r.server_id)
        if self.strategy == "random":
            return self._rng.choice(ordered)
        if self.strategy == "round-robin":
            return self._round_robin(server_name, ordered)
        least = min(r.outstanding for r in ordered)
        return self._round_robin(server_name, [r for r in ordered if r.outstanding == least])
