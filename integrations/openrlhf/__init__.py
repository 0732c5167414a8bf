"""OpenRLHF 0.11 integration: the served guard as OpenRLHF's remote reward.

Either point ``--reward.remote_url http://HOST:8000/get_reward`` at the service (the server speaks
OpenRLHF's protocol), or pass the file of :mod:`guard_reward.integrations.openrlhf.reward_func` as
``--reward.remote_url /path/to/reward_func.py`` (it calls the service; set ``$GUARD_REWARD_URL``).
"""
