"""Train stage: the training loop, its config, mixture sampling, checkpoints, curves."""
