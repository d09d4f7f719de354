"""Test and benchmark harness: a local Mosquitto on a free port (:mod:`.broker`) and simulated
devices for fleet tests (:mod:`.fleet_sim`).

No product module imports this package (tests/test_layout.py checks it); the ``edge-agent demo``
walkthrough, itself a try-it-out harness, starts its broker from here.
"""
