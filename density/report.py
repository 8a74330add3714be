"""`python -m density.report` runs density.demo.report (the demo's report); kept as an alias of the command."""

from density.demo.report import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
