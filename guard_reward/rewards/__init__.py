"""TRL-facing reward functions built on the guards.

``SafetyReward`` / ``HybridSafetyReward`` (scalar, Qwen3Guard-Gen, on the public base ``GuardReward``) and
``TokenSafetyPenalty`` (dense, Qwen3Guard-Stream) and ``TurnSafetyReward`` (dense: each assistant turn's Gen value
on its own tokens) are plain picklable callables following TRL's reward-function
convention. ``AttackReward`` reads the same guard from the other side: a reward for an attacker policy whose
completion is a prompt for a defender.
"""

from guard_reward.rewards.attack import AttackReward, Defender
from guard_reward.rewards.base import GuardReward
from guard_reward.rewards.helpfulness import RewardModelScore, load_reward_function
from guard_reward.rewards.safety import HybridSafetyReward, SafetyReward
from guard_reward.rewards.summed import SummedTokenReward
from guard_reward.rewards.token import TokenSafetyPenalty
from guard_reward.rewards.turn_level import TurnSafetyReward
from guard_reward.shaping.novelty import AttackMemory

__all__ = [
    "AttackMemory",
    "AttackReward",
    "Defender",
    "GuardReward",
    "HybridSafetyReward",
    "RewardModelScore",
    "SafetyReward",
    "SummedTokenReward",
    "TokenSafetyPenalty",
    "TurnSafetyReward",
    "load_reward_function",
]
