"""Entry point for `python -m local_triton`."""

from local_triton.cli import main

raise SystemExit(main())
