"""`python -m optkit` runs the CLI."""

from optkit.cli.main import main

main()
