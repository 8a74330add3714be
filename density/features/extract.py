"""The feature-cache extraction command (`python hubert_feature_reader.py`): one (frames, dim) tensor per clip.

    python hubert_feature_reader.py --root data/sc09 --out data/sc09_hubert --type hubert_L6 \
        --checkpoint hubert_base_ls960.pt
    python hubert_feature_reader.py --csv splits/sc09-train.csv --out data/sc09_hubert/train --type melspec

The features come from density/features/hubert.py (HuBERT layer L) or the log-mel front end.
"""

import argparse
import re
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from density.audio.signal import SAMPLE_RATE, AudioError, load_audio
from density.data.splits import read_csv
from density.features.hubert import Featurizer
from density.runtime import cli
from density.runtime.fileio import remove_stale_temporaries, save_torch, write_text
from density.runtime.outputs import confined

AUDIO_SUFFIXES = (".wav", ".flac")
REPORT_NAME = "extract_report.txt"


def _feature_type(s):
    if re.fullmatch(r"hubert_L\d+|melspec", s) is None:
        raise argparse.ArgumentTypeError(f"--type must be hubert_L<layer> (e.g. hubert_L6) or melspec, got {s!r}")
    return s


def find_jobs(root=None, csv_path=None):
    """-> sorted [(audio path, output path relative to --out)].

    Tree mode mirrors the relative path (folders starting with '_', like Speech Commands' _background_noise_, are
    not utterances and are left out); CSV mode maps each `path` to '<parent folder>/<name>.pt' (reference note 27).
    Two inputs with one output name are a ValueError naming both.
    """
    if csv_path is not None:
        columns, rows = read_csv(csv_path)
        if "path" not in (columns or []):
            raise ValueError(f"{csv_path}: no 'path' column (expected a split CSV with columns path,label)")
        paths = [Path(row["path"]) for row in rows]
        jobs = sorted((p, Path(p.parent.name) / p.with_suffix(".pt").name) for p in paths)
    else:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"--root {root} is not a directory")
        jobs = [
            (p, p.relative_to(root).with_suffix(".pt"))
            for p in sorted(root.rglob("*"))
            if p.suffix.lower() in AUDIO_SUFFIXES
            and p.is_file()
            and not any(d.startswith("_") for d in p.relative_to(root).parts[:-1])
        ]
    sources = {}
    for src, rel in jobs:
        if rel in sources and sources[rel] != src:
            raise ValueError(
                f"{sources[rel]} and {src} would both be written to {rel}: rename one of them or "
                "list only one of them in the input"
            )
        sources[rel] = src
    return jobs


def _is_done(path):
    """True if `path` holds a loadable 2-D feature tensor (a finished output of an earlier run)."""
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or foreign file: (re)compute it
        return False
    return isinstance(t, torch.Tensor) and t.dim() == 2


def extract_all(jobs, out, featurize, batch_size=16, resample=False):
    """Write one (frames, dim) float32 tensor per job under `out`, skipping finished outputs and bad files.

    Clips are batched with others of the same length, so each output equals the single-clip result. Any error
    reading or encoding a file skips that file with a message; failing to write an output (WriteError) stops.
    Temporaries of killed earlier runs are removed first.
    Returns (n_written, n_already_done, [message for each skipped file]).
    """
    out = Path(out)
    outputs = [confined(out, rel, source=src) for src, rel in jobs]  # every name checked before any work
    remove_stale_temporaries(out, recursive=True)
    todo = [(src, dst) for (src, _), dst in zip(jobs, outputs) if not _is_done(dst)]
    buckets, skipped, written = defaultdict(list), [], 0

    def flush(items):
        try:
            feats = featurize(torch.stack([wav for _, wav, _ in items]))
        except Exception as e:
            if len(items) > 1:  # find the clip that fails: encode them one by one
                return sum(flush([item]) for item in items)
            skipped.append(f"{items[0][0]}: feature extraction failed ({type(e).__name__}: {e})")
            return 0
        for feat, (_, _, dst) in zip(feats, items):
            save_torch(feat.to("cpu", copy=True), dst)  # copy: store this clip only, not the batch storage
        return len(items)

    bar = tqdm(todo, desc="extracting", unit="file", dynamic_ncols=True)
    for src, dst in bar:
        try:
            wav = load_audio(src, SAMPLE_RATE, resample=resample)
        except AudioError as e:
            skipped.append(str(e))
            continue
        except Exception as e:  # a decoder fault on one file must not stop the run
            skipped.append(f"{src}: cannot read audio ({type(e).__name__}: {e})")
            continue
        if featurize.num_frames(len(wav)) == 0:
            skipped.append(f"{src}: only {len(wav)} samples, too short to give one feature frame")
            continue
        bucket = buckets[len(wav)]
        bucket.append((src, wav, dst))
        if len(bucket) == batch_size:
            written += flush(bucket)
            bucket.clear()
        bar.set_postfix(skipped=len(skipped), refresh=False)  # redrawn at tqdm's own pace, not once per file
    for bucket in buckets.values():
        if bucket:
            written += flush(bucket)
    return written, len(jobs) - len(todo), skipped


def main(argv=None):
    """The command line (density/cli.py: a user error is one `error: ...` line and status 2) -> 0."""
    return cli.run(extract_command, argv)


def extract_command(argv):
    p = cli.ArgumentParser(
        description="Extract a feature cache (one <name>.pt tensor of shape (frames, dim) per utterance) from a "
        "Speech-Commands-style tree or a split CSV. Re-running skips finished outputs; unreadable, "
        "empty, too short or wrong-rate files are skipped and listed in <out>/" + REPORT_NAME + "."
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--root",
        help="audio tree (.wav/.flac, 16 kHz); outputs mirror its relative paths. "
        "Folders starting with '_' (e.g. _background_noise_) are left out",
    )
    src.add_argument("--csv", help="split CSV from split_data.py (column 'path'); outputs go to <label>/<name>.pt")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument(
        "--type",
        required=True,
        type=_feature_type,
        help="hubert_L6 (HuBERT block-6 output, 768-d "
        "for HuBERT base, 50 frames/s) or melspec (128-band log-mel, 100 frames/s)",
    )
    p.add_argument(
        "--checkpoint",
        help="HuBERT weights: fairseq .pt (e.g. hubert_base_ls960.pt; fairseq not needed), "
        "transformers folder, or hub id (e.g. facebook/hubert-base-ls960)",
    )
    p.add_argument("--batch_size", type=int, default=16, help="clips per forward pass (default 16)")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when available)",
    )
    p.add_argument(
        "--resample", action="store_true", help="resample audio that is not 16 kHz (polyphase) instead of skipping it"
    )
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch_size must be at least 1")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device {args.device}: not a device; use cpu, cuda or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but CUDA is not available; use --device cpu")
    if args.type != "melspec" and args.checkpoint is None:
        p.error(
            "--checkpoint is required for HuBERT features: a fairseq .pt such as hubert_base_ls960.pt, "
            "a transformers folder, or a hub id like facebook/hubert-base-ls960"
        )
    jobs = find_jobs(args.root, args.csv)  # OSError/ValueError: a bad --root/--csv, colliding names (density/cli.py)
    if not jobs:
        p.error(f"no .wav/.flac files found in {args.root or args.csv}")
    featurize = Featurizer(args.type, args.checkpoint, args.device)
    written, done, skipped = extract_all(jobs, args.out, featurize, args.batch_size, args.resample)
    lines = [f"{len(jobs)} files: {written} written, {done} already done, {len(skipped)} skipped"]
    lines += [f"skipped {msg}" for msg in skipped]
    report = Path(args.out) / REPORT_NAME
    write_text(report, "\n".join(lines) + "\n")
    print("\n".join(lines) + f"\nreport: {report}")
    return 0


if __name__ == "__main__":
    cli.command(main)
