"""Speech Commands -> SC09 split CSVs: `python split_data.py --download DIR` or `--root_path DIR`
(density/data/splits.py)."""

from density.data.splits import main
from density.runtime.cli import command

if __name__ == "__main__":
    command(main)
