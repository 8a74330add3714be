"""Train ASGAN: `python train_asgan.py [--config FILE] [key=value ...]` (density/gan/train.py)."""

from density.gan.train import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
