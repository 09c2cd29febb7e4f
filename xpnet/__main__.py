"""``python -m xpnet``: the same as the ``xpnet`` command."""

from xpnet.cli import main

raise SystemExit(main())
