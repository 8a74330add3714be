"""`python -m density.studio`: the studio command (density/studio/app.py)."""

from density.runtime.cli import command
from density.studio.app import main

command(main)
