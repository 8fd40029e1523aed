"""`python -m tdlib` is the same program as the `tdlib` console script."""

from tdlib.cli import main

raise SystemExit(main())
