"""The ``guard-reward`` command line: one module per subcommand, :func:`main` in :mod:`guard_reward.cli.main`."""

from guard_reward.cli.main import main

__all__ = ["main"]
