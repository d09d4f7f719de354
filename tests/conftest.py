"""Shared fixtures: a real Mosquitto on a free port, torn down after the test."""

from __future__ import annotations

import os
import tempfile

import pytest

from edge_agent.testing.broker import LocalBroker


@pytest.fixture
def broker():
    """A fresh Mosquitto on 127.0.0.1:<free port>; ``broker.url`` is its mqtt:// URL."""
    with LocalBroker() as b:
        yield b


@pytest.fixture(autouse=True, scope="session")
def _catalog_cache_outside_home():
    """Gateways started by tests (in process or as a child) keep their device catalogs in a
    folder of this run, never in the user's ``~/.cache/edge-agent/catalogs``."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-catalogs-") as folder:
        old = os.environ.get("EDGE_AGENT_CATALOG_CACHE")
        os.environ["EDGE_AGENT_CATALOG_CACHE"] = folder
        yield folder
        if old is None:
            os.environ.pop("EDGE_AGENT_CATALOG_CACHE", None)
        else:
            os.environ["EDGE_AGENT_CATALOG_CACHE"] = old
