"""The sandbox world and the second judge that ``guard-reward eval``'s tests share with tests/evaluation."""

from __future__ import annotations

from tests.evaluation.conftest import eval_world, second_judge_path

__all__ = ["eval_world", "second_judge_path"]  # pytest finds fixtures by their name in a conftest
