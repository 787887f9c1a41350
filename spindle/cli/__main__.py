"""`python -m spindle.cli`: the `spindle` command, where no script is installed."""

from spindle.cli.main import main

main()
