"""``python -m volbridge``: the command line."""

from .cli import main

main()
