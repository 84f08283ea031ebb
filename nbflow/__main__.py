"""``python -m nbflow``: the same CLI as the ``nbflow`` command."""

from .cli import main

raise SystemExit(main())
