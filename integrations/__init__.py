"""Trainer integrations, installed as ``guard_reward.integrations``."""
