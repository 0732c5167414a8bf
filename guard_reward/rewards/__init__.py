"""TRL-facing reward functions built on the guards.

``SafetyReward`` / ``HybridSafetyReward`` (scalar, Qwen3Guard-Gen) and ``TokenSafetyPenalty`` (dense,
Qwen3Guard-Stream) are plain picklable callables following TRL's reward-function convention.
"""

from guard_reward.rewards.helpfulness import RewardModelScore, load_reward_function
from guard_reward.rewards.safety import HybridSafetyReward, SafetyReward
from guard_reward.rewards.token import SummedTokenReward, TokenSafetyPenalty

__all__ = [
    "HybridSafetyReward",
    "RewardModelScore",
    "SafetyReward",
    "SummedTokenReward",
    "TokenSafetyPenalty",
    "load_reward_function",
]
