"""``python -m pacs`` is the ``pacs`` command."""

from pacs.cli import main

raise SystemExit(main())
