"""Tiny stand-in checkpoints in the real Qwen3Guard on-disk formats, built offline for tests, demos and
benchmarks (random or briefly trained weights, the real Qwen tokenizer and the documented chat templates)."""
