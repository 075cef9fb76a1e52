"""`python -m vfleet` runs the CLI."""

from vfleet.cli import main

main()
