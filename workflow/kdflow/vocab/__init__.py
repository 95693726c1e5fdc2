"""GLMD vocabulary compression by token frequency: counts, the kept vocabulary map, compressed models."""
