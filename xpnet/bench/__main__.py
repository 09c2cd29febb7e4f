"""``python -m xpnet.bench JSON -o RESULTS.md``: see ``xpnet.bench.cli``."""

from xpnet.bench.cli import main

raise SystemExit(main())
