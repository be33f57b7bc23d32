"""`python -m emu3`: the same as the `emu3` command."""

import sys

from emu3.cli import main

sys.exit(main())
