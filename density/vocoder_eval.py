"""`python -m density.vocoder_eval` runs density.evaluation.vocoders (scoring vocoders); kept as an alias of
the command."""

from density.evaluation.vocoders import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
