"""The demo: the built-in policy, its generated suite, the tiny model, and the end-to-end run."""
