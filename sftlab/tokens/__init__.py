"""Tokens stage: chat templates, encoding with loss weights, packing, mask views."""
