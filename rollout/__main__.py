"""``python -m rollout``: status, verify, canary, shadow, promote, rollback, policy."""

from __future__ import annotations

import sys

from gateway.rollout.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
