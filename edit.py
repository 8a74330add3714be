"""Latent-space tools: project, mix, convert, direction, probe (density/inference/edit.py)."""

from density.inference.edit import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
