"""Model stage: loading models and tokenizers, the response-only objective, packed attention.

Below both training and evaluation, so neither imports the other for these.
"""
