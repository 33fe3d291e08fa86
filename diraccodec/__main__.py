"""`python -m diraccodec`: the same as the `dirac` command."""

import sys

from diraccodec.cli.main import run

sys.exit(run())
