"""Guard rewards for TRL's own command line, configured without code.

``trl grpo`` (and ``trl rloo``) import any module-level callable named in ``--reward_funcs``::

    GUARD_REWARD_GEN=Qwen/Qwen3Guard-Gen-4B GUARD_REWARD_MODE=soft \\
        trl grpo --reward_funcs guard_reward.integrations.trl.cli_rewards.safety ...

:data:`safety` is a :class:`~guard_reward.rewards.safety.SafetyReward` built on its first call from

- ``$GUARD_REWARD_CONFIG``: a YAML mapping of settings (optional), then
- ``$GUARD_REWARD_<SETTING>`` environment variables, which win over the file; values are read as YAML
  (``true``, ``0.5``, ``{Violent: 2.0}``).

Settings: ``gen`` (the Qwen3Guard-Gen checkpoint: a folder or a hub id; required), ``device``, ``dtype`` (where
the guard is loaded; default: this process's accelerator, else the CPU) and every keyword of ``SafetyReward``
(``mode``, ``controversial``, ``refusal``, ``harmful_column``, ``thinking``, ``name``, ...). An unknown setting, in
the file or the environment, is an error naming it and the accepted ones, raised when the module is imported with
a configuration present (so ``trl`` stops before loading the policy), else at the first call. Importing the
module loads no model; the guard is loaded by the first reward call, once per process.

What this route cannot do: dense per-token rewards (``TokenSafetyPenalty``) need ``DenseGRPOTrainer``'s
per-token advantages, and the safety curves need ``SafetyCurvesCallback``; ``trl grpo`` builds a plain
``GRPOTrainer`` with neither. Use ``DenseGRPOTrainer`` in a script, or ``guard-reward train``, for those.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import yaml

from guard_reward.rewards.safety import SafetyReward

#: The environment variable naming a YAML file of settings, and the prefix of one variable per setting.
CONFIG_ENV = "GUARD_REWARD_CONFIG"
PREFIX = "GUARD_REWARD_"
#: Variables of this prefix that other entry points read (the served guard's address, the config file).
_OTHER = {CONFIG_ENV, "GUARD_REWARD_URL"}
_GUARD_KEYS = ("device", "dtype")


def _reward_keys() -> list[str]:
    return [
        p.name
        for p in inspect.signature(SafetyReward).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]


def accepted_settings() -> list[str]:
    """Every setting name: ``gen``, ``device``, ``dtype`` and ``SafetyReward``'s keywords."""
    return ["gen", *_GUARD_KEYS, *_reward_keys()]


def read_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings from ``$GUARD_REWARD_CONFIG`` and the ``$GUARD_REWARD_*`` variables (the variables win);
    raises ``ValueError`` naming an unknown setting, a file that is not a mapping, or a value that is not
    YAML."""
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    path = environ.get(CONFIG_ENV)
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"${CONFIG_ENV}={path}: no such file (a YAML mapping of reward settings)")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(
                f"${CONFIG_ENV}={path}: expected a mapping of settings, got {type(data).__name__}"
            )
        settings.update({str(k): (v, f"in {path}") for k, v in data.items()})
    for var, text in environ.items():
        if not var.startswith(PREFIX) or var in _OTHER:
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ValueError(f"${var}: {text!r} is not a YAML value ({exc.__class__.__name__})") from None
        settings[var.removeprefix(PREFIX).lower()] = (value, f"from ${var}")
    accepted = accepted_settings()
    for key, (_, where) in settings.items():
        if key not in accepted:
            raise ValueError(
                f"unknown guard reward setting {key!r} ({where}); accepted: {', '.join(accepted)}"
            )
    return {k: v for k, (v, _) in settings.items()}


def build_reward(settings: Mapping[str, Any]) -> SafetyReward:
    """The ``SafetyReward`` the settings describe (the guard is loaded at its first call)."""
    settings = dict(settings)
    gen = settings.pop("gen", None)
    if not gen:
        raise ValueError(
            f"no guard: set ${PREFIX}GEN (or `gen:` in ${CONFIG_ENV}) to a Qwen3Guard-Gen folder or hub id"
        )
    guard_kwargs = dict(settings.pop("guard_kwargs", None) or {})
    for key in _GUARD_KEYS:
        value = settings.pop(key, None)
        if value is not None:
            guard_kwargs[key] = value
    return SafetyReward(str(gen), guard_kwargs=guard_kwargs, **settings)


class EnvironmentReward:
    """A reward built from the environment on its first call (module docstring); a plain TRL reward function
    otherwise: ``(prompts, completions, **kwargs) -> list[float | None]``, ``__name__`` the reward's name."""

    def __init__(self, default_name: str) -> None:
        self.__name__ = default_name
        self._reward: SafetyReward | None = None
        if any(v == CONFIG_ENV or (v.startswith(PREFIX) and v not in _OTHER) for v in os.environ):
            self.__name__ = self._build().__name__  # a configuration is present: check it now, load nothing

    def _build(self) -> SafetyReward:
        if self._reward is None:
            settings = read_settings()
            settings.setdefault("name", self.__name__)
            self._reward = build_reward(settings)
        return self._reward

    @property
    def reward(self) -> SafetyReward:
        """The underlying ``SafetyReward`` (built now if it was not yet)."""
        return self._build()

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        return self._build()(prompts, completions, **kwargs)


#: ``--reward_funcs guard_reward.integrations.trl.cli_rewards.safety``: Qwen3Guard-Gen's verdict as a reward.
safety = EnvironmentReward("guard_safety")
