"""Train stage: the training loop, its config, mixture sampling, checkpoints, the metrics log and curves."""
