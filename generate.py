"""Write wavs and a spectrogram PNG from an ASGAN: `python generate.py --checkpoint CKPT`
(density/inference/generate.py)."""

from density.inference.generate import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
