"""`python -m herd.cli ...` runs the `herd` command."""

import sys

from herd.cli import main

sys.exit(main())
