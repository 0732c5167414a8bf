"""verl 0.9 integration: the served guard as verl's reward (its reward loop calls a reward one sample at a time;
the service merges those concurrent calls into guard batches).

- :class:`~guard_reward.integrations.verl.reward_manager.GuardRewardManager`: a reward-loop manager
  (``reward.reward_manager.source: importlib``) that decodes each sample's prompt and response, asks the
  service, and returns ``reward_score`` and the guard's fields as ``reward_extra_info``.
- :func:`~guard_reward.integrations.verl.compute_score.compute_score`: a plain async ``compute_score`` for
  ``reward.custom_reward_function``.

Both need only the core library (no TRL, no Ray Serve) and a running ``guard-reward serve``.
"""

_LAZY = {
    "GuardRewardManager": "guard_reward.integrations.verl.reward_manager",
    "compute_score": "guard_reward.integrations.verl.compute_score",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
