"""A seconds-sized sandbox world, built once for the sandbox tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory):
    from guard_reward.sandbox.demo import DemoConfig, build_world

    return build_world(DemoConfig.small(tmp_path_factory.mktemp("sandbox")))
