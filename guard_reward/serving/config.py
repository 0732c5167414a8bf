"""Loading the ``/get_reward`` reward config (``--reward-config YAML``)."""

from __future__ import annotations

import os
from typing import Any

import yaml

from guard_reward.serving.get_reward import reward_kwargs


def load_reward_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping of ``SafetyReward`` fields (``mode: soft``, or the recipes' ``guard_mode: soft``);
    checked here so a typo fails before any replica starts."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"reward config {path} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"reward config {path}: expected a mapping of fields, got {type(data).__name__}")
    reward_kwargs(data)
    return data
