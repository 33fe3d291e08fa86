"""`python -m diraccodec.cli`: the same as the `dirac` command."""

from diraccodec.cli.main import main

main(prog_name="dirac")
