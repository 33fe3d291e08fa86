"""`python -m diraccodec.cli`: the same as the `dirac` command."""

import sys

from diraccodec.cli.entry import run

sys.exit(run())
