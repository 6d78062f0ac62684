"""``python -m vital``: the same as the ``vital`` command."""

from vital.cli import main

main()
