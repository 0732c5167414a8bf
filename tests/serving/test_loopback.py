"""A service started for loopback (``--host 127.0.0.1``) listens on nothing else: not Ray's GCS, raylet, object
manager, workers or agents, not HAProxy's stats and metrics ports (Ray's ports run work for anyone who reaches
them)."""

from __future__ import annotations

import os

import pytest

from guard_reward.serving.ray_env import descendants
from tests.serving.sockets import exposed, listening

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="sockets are read from /proc")


def test_the_session_service_listens_on_loopback_only(server):
    ours = set(descendants())  # this process started the session's Ray: every Ray process descends from it
    names = set()
    for pid, _, _ in listening(ours):
        with open(f"/proc/{pid}/comm") as f:
            names.add(f.read().strip())
    assert {"gcs_server", "raylet", "haproxy"} <= names, names  # the check sees Ray's and HAProxy's ports
    assert exposed(ours) == []
    assert exposed(ours | {os.getpid()}) == []  # nor this driver's own worker port
