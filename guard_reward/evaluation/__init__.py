"""Held-out safety evaluation: prompt sets, batched generation, judges, rates with intervals, reward-hacking
alarms and reports (``guard-reward eval``; ``SafetyEvalCallback`` in ``guard_reward.integrations.trl``); also
dataset annotation (``guard-reward moderate``), the resumable JSONL files both commands write, and the plots
of a run's safety curves."""

from guard_reward.evaluation.alarms import ALARMS, AlarmConfig, Alarms
from guard_reward.evaluation.answering import EVAL_PREFIX, GenerationSettings, answer_and_judge, eval_metrics
from guard_reward.evaluation.defender import LocalDefender
from guard_reward.evaluation.judges import Judge, load_judge
from guard_reward.evaluation.prompts import EvalPrompt, bundled_prompt_set, read_prompt_set
from guard_reward.evaluation.served_defender import DefenderUnreachable, ServedDefender
from guard_reward.evaluation.stats import Rate, cohen_kappa, newcombe, wilson

__all__ = [
    "ALARMS",
    "EVAL_PREFIX",
    "AlarmConfig",
    "Alarms",
    "DefenderUnreachable",
    "EvalPrompt",
    "GenerationSettings",
    "Judge",
    "LocalDefender",
    "Rate",
    "ServedDefender",
    "answer_and_judge",
    "bundled_prompt_set",
    "cohen_kappa",
    "eval_metrics",
    "load_judge",
    "newcombe",
    "read_prompt_set",
    "wilson",
]
