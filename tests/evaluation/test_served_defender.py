"""ServedDefender without a server: nothing listening at the URL is one clear error naming it, and settings that
would break one-answer-per-prompt are refused when built. (Its answers are tested on a real vLLM server in
``tests/vllm/test_served_defender.py``.)"""

from __future__ import annotations

import socket

import pytest

from guard_reward.evaluation import DefenderUnreachable, ServedDefender


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # freed again on close: nothing listens there


def test_nothing_listening_is_one_error_naming_the_url():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    defender = ServedDefender(url, retries=1, backoff=0.01)
    with pytest.raises(DefenderUnreachable, match=rf"served policy at {url} cannot be reached"):
        defender(["hi"])
    assert defender.client.stats["requests"] == 2  # retried before giving up
    assert defender([]) == []  # nothing to ask: the server is not needed


def test_bad_settings_are_refused_when_built():
    with pytest.raises(ValueError, match=r"extra_body may not set \['messages', 'n'\]"):
        ServedDefender("http://127.0.0.1:1/v1", extra_body={"n": 2, "messages": [], "seed": 0})
    with pytest.raises(ValueError, match="max_tokens and parallel must be >= 1"):
        ServedDefender("http://127.0.0.1:1/v1", max_tokens=0)
    with pytest.raises(TypeError, match="one string"):
        ServedDefender("http://127.0.0.1:1/v1")("hi")
    assert ServedDefender("http://127.0.0.1:1").url == "http://127.0.0.1:1/v1"
