"""TRL integration: dense-advantage GRPO, PPO with dense guard rewards, their constrained forms, attacker and
defender self-play, safety-curve callbacks."""

from guard_reward.integrations.trl.callbacks import SafetyCurvesCallback

# Imported on first use: GuardRewardModel must import under trl 1.9-1.12 (for their PPOTrainer), where the
# trainers built on TRL 1.16 cannot.
_LAZY = {
    "DenseGRPOTrainer": "guard_reward.integrations.trl.grpo",
    "GuardPPOTrainer": "guard_reward.integrations.trl.ppo",
    "GuardPPOConfig": "guard_reward.integrations.trl.ppo_config",
    "GuardRewardModel": "guard_reward.integrations.trl.reward_model",
    "ConstrainedGRPOTrainer": "guard_reward.integrations.trl.constraint",
    "ConstrainedPPOTrainer": "guard_reward.integrations.trl.constraint",
    "SelfPlayTrainer": "guard_reward.integrations.trl.self_play",
}

__all__ = ["SafetyCurvesCallback", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
