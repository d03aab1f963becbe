"""One module per ``sftlab`` sub-command; each defines ``register(subparsers)``."""
