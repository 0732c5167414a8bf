"""TRL integration: dense-advantage GRPO, PPO with dense guard rewards, safety-curve callbacks."""

from guard_reward.integrations.trl.callbacks import SafetyCurvesCallback

__all__ = ["SafetyCurvesCallback"]
