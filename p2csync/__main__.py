"""``python -m p2csync``: see p2csync.cli."""

import sys

from p2csync.cli import main

sys.exit(main())
