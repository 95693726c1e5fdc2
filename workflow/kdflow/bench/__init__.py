"""Benchmarks against the peers (TRL, DistillKit-style caches) and of the pipeline's own rules: `kdflow bench`."""
