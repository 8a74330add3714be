"""Train a vocoder: `python train_vocoder.py [key=value ...]` (density/vocoders/train.py)."""

from density.runtime.cli import command
from density.vocoders.train import main

if __name__ == "__main__":
    command(main)
