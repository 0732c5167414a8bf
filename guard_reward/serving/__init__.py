"""The guards as a shared service on Ray Serve (``guard-reward serve``): the application, request parsing and
batching, and OpenRLHF's ``/get_reward`` on top of a reward.

Only :mod:`guard_reward.serving.app` imports ``ray[serve]`` (the ``serve`` extra); the other modules
(:mod:`~guard_reward.serving.protocol`, :mod:`~guard_reward.serving.get_reward`, ...) do not, so the verl and
OpenRLHF adapters and the command line import them without it. The wire format the server and the remote
clients (:mod:`guard_reward.guards.remote`) share is :mod:`guard_reward.wire`, at the package root.
"""
