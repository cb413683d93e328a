"""``python -m bench``: the bench suite (see bench/suite/cli.py)."""

import sys

from bench.suite.cli import main

sys.exit(main())
