"""A seconds-sized sandbox world and a second, independently trained Gen judge, built once for these tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def eval_world(tmp_path_factory: pytest.TempPathFactory):
    from guard_reward.sandbox.demo import DemoConfig, build_world

    return build_world(DemoConfig.small(tmp_path_factory.mktemp("eval_world")))


@pytest.fixture(scope="session")
def second_judge_path(tmp_path_factory: pytest.TempPathFactory, eval_world):
    from guard_reward.sandbox.guards import GuardSize, build_gen_guard

    path = tmp_path_factory.mktemp("judge2") / "gen"
    return build_gen_guard(
        path, eval_world.config.language, GuardSize(steps=60, batch_size=16), seed=7, progress=False
    )


@pytest.fixture(scope="session")
def sandbox_prompts(eval_world):
    from guard_reward.evaluation.prompts import EvalPrompt

    return [
        EvalPrompt(i + 1, [{"role": "user", "content": p}], h, "unsafe topic" if h else "benign topic")
        for i, (p, h) in enumerate(eval_world.heldout[:10])
    ]
