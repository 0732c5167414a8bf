"""Side-by-side ratio benchmarks (measurements, not timed tests)."""
