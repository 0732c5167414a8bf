"""Guard backends: Qwen3Guard-Gen (verdicts, label probabilities) and Qwen3Guard-Stream (per-token risk)."""
