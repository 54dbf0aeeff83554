"""``python -m fedpress.cli``: the ``fedpress`` command."""

from . import main

main()
