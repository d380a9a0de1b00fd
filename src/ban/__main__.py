"""``python -m ban``: the ``ban`` command (for an environment whose scripts are not on PATH)."""

import sys

from ban.cli import main

sys.exit(main())
