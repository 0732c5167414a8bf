"""Where the verl integration finds the service and its reward settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: Environment variable naming the service when the config does not.
URL_ENV = "GUARD_REWARD_URL"
CLIENT_KEYS = ("timeout", "retries", "backoff", "backoff_max", "chunk_size")


def split_settings(settings: Mapping[str, Any] | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``{"url", client options..., reward fields...}`` -> ``(url, client kwargs, reward config)``.

    The url falls back to ``$GUARD_REWARD_URL``; the reward fields are ``SafetyReward``'s (``mode``,
    ``controversial``, ``refusal``, ... as for ``guard-reward serve --reward-config``).
    """
    settings = dict(settings or {})
    url = settings.pop("url", None) or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(
            f"no guard service url: set reward.guard_reward.url (or reward_kwargs.url) or ${URL_ENV} "
            "to the address printed by `guard-reward serve`"
        )
    client = {k: settings.pop(k) for k in CLIENT_KEYS if k in settings}
    return str(url), client, settings
