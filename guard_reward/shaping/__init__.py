"""Pure functions that turn guard outputs into rewards: scalar (verdict -> float) and dense
((B, T) risk -> (B, T) rewards and advantages)."""
