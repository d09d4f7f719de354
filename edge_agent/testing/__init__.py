"""Test and benchmark harness: a local Mosquitto on a free port (:mod:`.broker`), simulated
devices for fleet tests (:mod:`.fleet_sim`) and an in-memory client/server pair that lets the
official ``mcp`` client test the server core without a broker (:mod:`.memory`).

No product module imports this package (tests/test_layout.py checks it); the ``edge-agent demo``
walkthrough, itself a try-it-out harness, starts its broker from here.
"""
