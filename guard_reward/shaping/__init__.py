"""Pure functions from guard outputs to rewards and advantages: scalar (verdict -> float), dense ((B, T) risk ->
(B, T) rewards and per-token advantages), the safety constraint's multiplier, PPO's per-token maths (KL, GAE,
value loss), and the masked means, stds and whitening they all share (:mod:`~guard_reward.shaping.normalize`)."""
