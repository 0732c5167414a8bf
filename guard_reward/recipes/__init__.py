"""Training recipes: the dataclasses a YAML recipe in ``configs/`` is loaded into, and their checks."""
