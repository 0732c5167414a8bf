"""The guards as a shared service on Ray Serve (``guard-reward serve``), its wire format and request checks.

``guard_reward.serving.app`` needs ``ray[serve]`` (the ``serve`` extra); ``wire``, ``protocol`` and
``get_reward`` do not, so the remote clients (:mod:`guard_reward.guards.remote`) import without it.
"""
