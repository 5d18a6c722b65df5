"""`python -m reverie`: the `reverie` command."""

import sys

from reverie.cli import main

sys.exit(main())
