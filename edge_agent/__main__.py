"""``python -m edge_agent`` = the ``edge-agent`` command."""

import sys

from .cli import main

sys.exit(main())
