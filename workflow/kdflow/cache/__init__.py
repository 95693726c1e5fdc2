"""Teacher logit cache: the teacher runs once, every student run reuses its outputs."""
