"""`python -m density.digits` runs density.data.digits (the built-in spoken-digits corpus); kept as an
alias of the command."""

from density.data.digits import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
