"""``python -m nomyo``: the same as the ``nomyo`` command."""

from ._cli import main

raise SystemExit(main())
