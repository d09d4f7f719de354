"""Shared fixtures: a real Mosquitto on a free port, torn down after the test."""

from __future__ import annotations

import pytest

from edge_agent.testing.broker import LocalBroker


@pytest.fixture
def broker():
    """A fresh Mosquitto on 127.0.0.1:<free port>; ``broker.url`` is its mqtt:// URL."""
    with LocalBroker() as b:
        yield b
