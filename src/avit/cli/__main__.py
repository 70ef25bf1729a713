"""``python -m avit.cli``: the same as the ``avit`` command."""

from avit.cli.main import main

main()
