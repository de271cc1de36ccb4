"""``python -m lossdoctor``: the command line."""

from .cli import main

main()
