"""Run the Hopper command line: ``python -m hopper``."""

from hopper.cli import main

if __name__ == "__main__":  # not when a spawned process (the API's) imports it again
    main()
