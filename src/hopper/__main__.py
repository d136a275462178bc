"""Run the Hopper command line: ``python -m hopper``."""

from hopper.cli import main

main()
