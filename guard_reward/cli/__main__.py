"""``python -m guard_reward.cli``: the ``guard-reward`` command."""

from guard_reward.cli.main import main

raise SystemExit(main())
