"""The paper's metrics on a model, a folder of wavs or saved arrays (density/evaluation/evaluate.py)."""

from density.evaluation.evaluate import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
