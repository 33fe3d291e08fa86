"""`python -m diraccodec.cli`: the same as the `dirac` command."""

import sys

from diraccodec.cli.main import run

sys.exit(run())
