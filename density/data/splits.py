"""Split a Speech Commands tree into train/valid/test CSVs (reference note 26), downloading it first if asked.

    python split_data.py --root_path /data/speech_commands_v0.02 --sc09_only true
    python split_data.py --download data/speech_commands --sc09_only true        # [--version 0.01]

`--download DIR` fetches the official archive into DIR (resumable, SHA-256 checked, safely extracted:
density/data/speech_commands.py; ASGAN_SPEECH_COMMANDS_URL / _SHA256 override the URL and the hash) and then
splits DIR as `--root_path DIR` does. Reads `validation_list.txt` and `testing_list.txt` (one
`<word>/<file>.wav` per line) under the root;
train is every other .wav, minus folders whose name contains '_' (`_background_noise_`). With
`--sc09_only` only the ten digit words are kept. Writes CSVs with columns `path` (root/relative) and
`label` (folder name) to `<out_dir>/sc09-{train,valid,test}.csv` (SC09) or `<out_dir>/{train,valid,test}.csv`.
Existing CSVs are replaced only with `--overwrite` (checked before the download or the scan).
Unlike the reference, `--sc09_only false` really means false (the reference's argparse `type=bool`
made any non-empty string true).
"""

import argparse
import csv
import io
import sys
from pathlib import Path

from density.data.speech_commands import VERSIONS, fetch_speech_commands
from density.runtime import cli
from density.runtime.fileio import atomic_path
from density.runtime.outputs import add_overwrite_flag, plan_outputs

SC09_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LIST_FILES = {"valid": "validation_list.txt", "test": "testing_list.txt"}
SPLITS = ("train", "valid", "test")  # the CSVs split_data.py writes, in this order


class SplitError(ValueError):
    """A split CSV that is missing or malformed."""


def read_csv(path):
    """A UTF-8 CSV file with a header -> (its column names or None when empty, [one dict per row]). SplitError
    names a file that is not UTF-8 text, with the line and the fix."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SplitError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x}); "
            "save the CSV as UTF-8 (e.g. iconv -f latin1 -t utf-8) or write it again with split_data.py"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return reader.fieldnames, rows


def read_split_csv(path):
    """A `path,label` CSV written by split_data.py -> (paths, labels), lists of str. SplitError names a
    missing, non-UTF-8 or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(
            f"{path}: no such CSV; write the splits with split_data.py --root_path <tree> --sc09_only true"
        )
    _, rows = read_csv(path)
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise SplitError(
            f"{path}: expected a CSV with columns path,label and at least one row (as split_data.py writes)"
        )
    return [r["path"] for r in rows], [r["label"] for r in rows]


def class_order(labels):
    """Output order for a label set: SC09 order when every label is a digit word, else sorted."""
    names = set(labels)
    return tuple(c for c in SC09_CLASSES if c in names) if names <= set(SC09_CLASSES) else tuple(sorted(names))


def str2bool(s):
    """Parse true/false/1/0/yes/no (case-insensitive) for argparse."""
    v = str(s).strip().lower()
    if v in ("true", "1", "yes", "y", "t"):
        return True
    if v in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false (or 1/0, yes/no), got '{s}'")


def _keep(rel, sc09_only):
    return not sc09_only or Path(rel).parent.name in SC09_CLASSES


def _read_list(root, name, sc09_only, on_disk):
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --root_path must be a Speech Commands folder holding "
            f"validation_list.txt and testing_list.txt"
        )
    rels = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    rels = [r for r in rels if _keep(r, sc09_only)]
    missing = [r for r in rels if r not in on_disk]
    if missing:
        raise FileNotFoundError(
            f"{path} lists {len(missing)} file(s) that are not under {root}, "
            f"e.g. {root / missing[0]}; is the dataset fully extracted?"
        )
    return set(rels)


def make_splits(root, sc09_only):
    """-> {'train': [...], 'valid': [...], 'test': [...]}, each a sorted list of posix paths relative to root."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root_path {root} is not a directory")
    rels = {p.relative_to(root).as_posix() for p in root.rglob("*.wav")}
    rels = {r for r in rels if _keep(r, sc09_only)}
    if not rels:
        what = "digit-word .wav files (zero/ ... nine/)" if sc09_only else ".wav files"
        raise FileNotFoundError(f"no {what} found under {root}")
    valid = _read_list(root, LIST_FILES["valid"], sc09_only, rels)
    test = _read_list(root, LIST_FILES["test"], sc09_only, rels)
    train = {r for r in rels - valid - test if "_" not in Path(r).parent.name}
    return dict(zip(SPLITS, (sorted(train), sorted(valid), sorted(test))))


def write_csv(path, root, rels):
    """Atomically write a `path,label` CSV: path = root/rel, label = lower-cased parent folder name."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label"])
        for r in rels:
            w.writerow([str(Path(root) / r), Path(r).parent.name.lower().strip()])


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--root_path", help="Speech Commands root (holds <word>/ folders and the lists)")
    src.add_argument(
        "--download",
        metavar="DIR",
        help="download the official Speech Commands archive into DIR (resumes; skipped when done), then split DIR",
    )
    ap.add_argument("--version", choices=VERSIONS, help=f"Speech Commands version for --download ({VERSIONS[0]})")
    ap.add_argument("--sc09_only", type=str2bool, default=False, help="keep only zero..nine (true/false)")
    ap.add_argument("--out_dir", default="splits", help="where the CSVs go (default ./splits)")
    add_overwrite_flag(ap, "split CSVs already in --out_dir", "any download or scan")
    args = ap.parse_args(argv)
    if args.version and not args.download:
        ap.error("--version goes with --download")
    prefix = "sc09-" if args.sc09_only else ""
    dests = plan_outputs(args.out_dir, [(name, f"{prefix}{name}.csv") for name in SPLITS], overwrite=args.overwrite)
    if args.download:
        args.root_path = str(fetch_speech_commands(args.download, args.version or VERSIONS[0]))
    try:
        splits = make_splits(args.root_path, args.sc09_only)
    except FileNotFoundError as e:
        sys.exit(f"split_data.py: {e}")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    for dest, rels in zip(dests, splits.values()):
        write_csv(dest, args.root_path, rels)
        print(f"wrote {dest} ({len(rels)} files)")


if __name__ == "__main__":
    cli.command(main)
