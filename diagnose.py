"""Training diagnostics: fit, probe, ceiling (density/gan/diagnose.py)."""

from density.gan.diagnose import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
