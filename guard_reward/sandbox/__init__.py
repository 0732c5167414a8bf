"""A safety sandbox: a tiny world in which safety RL with guard rewards runs end to end on a CPU in minutes.

It brings its own synthetic language (:mod:`~guard_reward.sandbox.language`), an exact ground-truth judge
(:mod:`~guard_reward.sandbox.rules`), a word-level tokenizer shared by a tiny Qwen3 policy and two tiny guards
saved in the real Qwen3Guard-Gen and Qwen3Guard-Stream on-disk formats, and the GRPO arms of ``guard-reward demo``.
"""
