"""The default server-id from /etc/machine-id (edge_agent.device.identity), with machine-id files made
in a temporary folder, and the config default that uses it."""

from __future__ import annotations

import re

import pytest

from edge_agent.device import config as cfg
from edge_agent.device import identity

MID_A = "0123456789abcdef0123456789abcdef"
MID_B = "fedcba9876543210fedcba9876543210"
SHAPE = re.compile(r"^edge-[A-Za-z0-9_.-]{1,40}-[0-9a-f]{8}$")


def files(tmp_path, *contents: str | None) -> tuple[str, ...]:
    """One path per content; None leaves the file absent."""
    out = []
    for i, text in enumerate(contents):
        path = tmp_path / f"machine-id-{i}"
        if text is not None:
            path.write_text(text)
        out.append(str(path))
    return tuple(out)


def test_machine_id_is_read_and_normalised(tmp_path):
    assert identity.machine_id(files(tmp_path, MID_A + "\n")) == MID_A
    assert identity.machine_id(files(tmp_path, MID_A.upper())) == MID_A


@pytest.mark.parametrize("bad", ["", "uninitialized\n", "xyz", MID_A[:-1], MID_A + "00", "\x00" * 32])
def test_no_usable_machine_id_falls_through_to_the_next_file(tmp_path, bad):
    assert identity.machine_id(files(tmp_path, bad)) is None
    assert identity.machine_id(files(tmp_path, bad, MID_B)) == MID_B
    assert identity.machine_id(files(tmp_path, None, MID_B)) == MID_B  # a missing file too


def test_default_server_id_shape_stability_and_uniqueness(tmp_path):
    a = identity.default_server_id(hostname="raspberrypi", files=files(tmp_path, MID_A))
    assert SHAPE.match(a) and a.startswith("edge-raspberrypi-")
    assert identity.default_server_id(hostname="raspberrypi", files=files(tmp_path, MID_A)) == a  # stable
    b = identity.default_server_id(hostname="raspberrypi", files=files(tmp_path, MID_B))
    assert b != a  # same hostname, another machine-id: no collision
    # the machine-id itself is not published (machine-id(5)): no 8-hex run of it appears
    suffix = a.rsplit("-", 1)[1]
    assert suffix not in MID_A


def test_default_server_id_hostname_is_made_topic_safe(tmp_path):
    sid = identity.default_server_id(hostname="my pi/#+é" + "x" * 60, files=files(tmp_path, MID_A))
    assert SHAPE.match(sid), sid
    assert "/" not in sid and "#" not in sid and "+" not in sid and len(sid) <= 54
    assert identity.default_server_id(hostname="", files=files(tmp_path, MID_A)).startswith("edge-host-")


def test_without_machine_id_the_hostname_alone(tmp_path):
    assert identity.default_server_id(hostname="raspberrypi", files=files(tmp_path, None)) == "edge-raspberrypi"


def test_config_default_uses_it():
    conf = cfg.from_dict({"device": {"server_name": "devices/x/y", "simulate": True}, "drivers": []})
    assert conf.device.server_id == identity.default_server_id()
    conf = cfg.from_dict({"device": {"server_name": "devices/x/y", "server_id": "mine", "simulate": True},
                          "drivers": []})
    assert conf.device.server_id == "mine"


def test_collision_hint_names_the_fix():
    default = "edge-raspberrypi-3f9c02ab"
    cloned = identity.collision_hint(default, default=default)
    assert "clone" in cloned and identity.MACHINE_ID_FIX in cloned and "[device] server_id" in cloned
    by_hand = identity.collision_hint("pump-1", default=default)
    assert "[device] server_id" in by_hand and default in by_hand and identity.MACHINE_ID_FIX in by_hand
    assert identity.MACHINE_ID_FIX == "sudo rm /etc/machine-id && sudo systemd-machine-id-setup"
