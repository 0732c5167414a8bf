"""TRL integration: dense-advantage GRPO, PPO with dense guard rewards, safety-curve callbacks."""
