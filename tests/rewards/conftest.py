"""Fixtures the reward tests share with other test folders: the served guard of the serving tests (the async
reward is checked against a running service)."""

from tests.serving.conftest import server  # noqa: F401
