"""The `dirac` command line, thin over the API: user commands first, research and training after.

Every command reports a user's mistake (bad file, bad option, unwritable output) as one
line on stderr with exit status 2, never a traceback.
"""

from diraccodec.cli.main import main

__all__ = ["main"]
