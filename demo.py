"""The offline demo: `python demo.py --out outputs/demo` (density/demo/pipeline.py)."""

from density.demo.pipeline import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
