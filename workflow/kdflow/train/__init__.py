"""One training loop for every stage: plain PyTorch or DeepSpeed, checkpoints, resume, health checks."""
