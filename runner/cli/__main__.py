"""`python -m runner.cli`: the same command line as `runner`."""

from . import main

main()
