"""``python -m hashbench`` is the same as the ``hashbench`` command."""

from hashbench.cli import main

main()
