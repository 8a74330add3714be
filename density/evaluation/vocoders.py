"""Score trained vocoders against Griffin-Lim on held-out clips: the same features in, the clips' audio as reference.

    python -m density.vocoder_eval --test_csv <splits>/sc09-test.csv --classifier <run>/classifier_best.pt \\
        --vocoder hifigan_small=runs/voc_hifigan/vocoder_best.pt --vocoder istft=runs/voc_istft/vocoder_best.pt \\
        [--n 500] [--json scores.json]     (--n: that many clips spread over the CSV; default all)

Each clip (whole, cut or end-padded to 1 s as the classifier reads it) gives its features (log-mels computed by
`density.audio.signal.log_mel`, or read from --feature_root for other features) and every vocoder reconstructs it.
Per row: `mr_stft`, the multi-resolution STFT distance to the clip (spectral convergence + log-magnitude L1 at
FFT sizes 512, 1024, 2048; lower is better; density.vocoder_training.mr_stft_distance), `mel_l1` (mean absolute
log-mel difference), `accuracy` of the digit classifier on the reconstructions (against the CSV's labels),
`nll`, its mean negative log-likelihood of the true label (finer-grained than an accuracy near 1), and the
synthesis seconds. The first rows are the clips themselves (the classifier's own accuracy) and, for log-mels,
Griffin-Lim (density.vocoder.GriffinLimVocoder, --griffin_lim_iters iterations). A vocoder file written by
train_vocoder.py also reports the steps and training minutes (wall clock, and the process's CPU time) of the
newest checkpoint in its folder.
Prints a markdown table; --json writes {'rows': [...]}.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from density.audio.signal import HOP, N_MELS, check_audio_files, fit_length
from density.data.splits import read_split_csv
from density.evaluation.classifier import load_classifier
from density.runtime import checkpoint as ckpt
from density.runtime import cli
from density.runtime.engine import resolve_device
from density.runtime.fileio import write_text
from density.runtime.run import periodic_checkpoints
from density.vocoders import training as vt
from density.vocoders.vocoder import GRIFFIN_LIM_LISTENING_ITERS, GriffinLimVocoder, load_vocoder

COLUMNS = (
    ("N", "n", "d"),
    ("MR-STFT ↓", "mr_stft", ".3f"),
    ("log-mel L1 ↓", "mel_l1", ".3f"),
    ("accuracy ↑", "accuracy", ".4f"),
    ("NLL ↓", "nll", ".4f"),
    ("steps", "steps", "d"),
    ("best at", "best_step", "d"),
    ("training min (CPU min)", "train_minutes", ".1f"),
    ("synthesis s", "seconds", ".1f"),
)


def training_info(vocoder_path):
    """{'steps', 'best_step' (of vocoder_best.pt), 'train_minutes', 'train_cpu_minutes'} of the newest
    train_vocoder.py checkpoint next to a vocoder file, or {}."""
    folder = Path(vocoder_path).parent
    periodic = periodic_checkpoints(folder)
    if not periodic:
        return {}
    state = ckpt.load(periodic[-1], ("steps", "vocoder"), "a train_vocoder.py checkpoint")
    return {
        "steps": state["steps"] + 1,
        "best_step": state.get("best", {}).get("steps"),
        "train_minutes": state.get("train_seconds", float("nan")) / 60,
        "train_cpu_minutes": state.get("train_cpu_seconds", float("nan")) / 60,
    }


@torch.no_grad()
def score(name, synthesize, loader, classifier, device):
    """One row: `synthesize` ((B, L, C) features -> (B, T) waveforms, or None for the clips themselves)."""
    totals, n, correct, nll, seconds = {"mr_stft": 0.0, "sc": 0.0, "log_mag": 0.0, "mel_l1": 0.0}, 0, 0, 0.0, 0.0
    for feats, real, labels in tqdm(loader, desc=name, unit="batch", leave=False):
        if synthesize is None:
            fake = real
        else:
            start = time.perf_counter()
            fake = fit_length(synthesize(feats.to(device)).float().cpu(), real.shape[-1])
            seconds += time.perf_counter() - start
            for key, value in vt.mr_stft_distance(fake, real).items():
                totals[key] += value.sum().item()
            totals["mel_l1"] += vt.log_mel_l1(fake, real, reduce=False).sum().item()
        logits, _ = classifier.classify(fake)
        target = torch.tensor([classifier.classes.index(t) for t in labels], device=logits.device)
        correct += (logits.argmax(1) == target).sum().item()
        nll += F.cross_entropy(logits.float(), target, reduction="sum").item()
        n += len(real)
    row = {"name": name, "n": n, "accuracy": correct / n, "nll": nll / n}
    if synthesize is not None:
        row.update({k: v / n for k, v in totals.items()}, seconds=seconds)
    return row


class LabelledClips(vt.VocoderClips):
    """VocoderClips whose items also carry the CSV label."""

    def __getitem__(self, i):
        return (*super().__getitem__(i), self.labels[i])


def evaluate_vocoders(
    test_csv,
    classifier_path,
    vocoders,
    *,
    n=0,
    feature_root=None,
    griffin_lim_iters=GRIFFIN_LIM_LISTENING_ITERS,
    batch_size=32,
    device="cpu",
):
    """Rows (dicts, see the module doc) for the clips, Griffin-Lim (log-mels only) and each (name, path) vocoder."""
    device = resolve_device(device)
    classifier = load_classifier(classifier_path, device)
    models = [(name, load_vocoder(path, device), path) for name, path in vocoders]
    dims = {m.cfg.in_dim for _, m, _ in models} or {N_MELS}
    hops = {m.cfg.hop for _, m, _ in models} or {HOP}
    if len(dims) > 1 or len(hops) > 1:
        raise ValueError(
            f"the vocoders take different features (dims {sorted(dims)}, hops {sorted(hops)}); "
            "score them in separate runs"
        )
    (in_dim,), (hop,) = dims, hops
    paths, labels = read_split_csv(test_csv)
    paths, labels = vt.spaced(paths, n), vt.spaced(labels, n)
    check_audio_files(paths)
    clips = LabelledClips(
        paths,
        labels=labels,
        data_type="melspec" if in_dim == N_MELS else "hubert_L6",
        hop=hop,
        in_dim=in_dim,
        feature_root=feature_root,
        segment_frames=vt.full_clip_frames(hop),
        random_crop=False,
    )
    loader = DataLoader(clips, batch_size)
    rows = [score("real clips", None, loader, classifier, device)]
    if in_dim == N_MELS and hop == HOP:
        gl = GriffinLimVocoder(n_iter=griffin_lim_iters).to(device)
        rows.append(
            score(f"Griffin-Lim ({griffin_lim_iters} it.)", lambda c: gl(c).squeeze(1), loader, classifier, device)
        )
    for name, model, path in models:
        rows.append(
            dict(
                score(name, lambda c, m=model: vt.vocode(m, c), loader, classifier, device),
                path=str(path),
                **training_info(path),
            )
        )
    return rows


def cells(row):
    """A row's values as the strings of the table's COLUMNS ('–' where it has none); training minutes are wall
    clock, with the process's CPU minutes in brackets."""
    out = [format(row[k], f) if row.get(k) is not None else "–" for _, k, f in COLUMNS]
    if row.get("train_cpu_minutes") is not None:
        out[[k for _, k, _ in COLUMNS].index("train_minutes")] += f" ({row['train_cpu_minutes']:.1f})"
    return out


def markdown(rows):
    head = "| | " + " | ".join(t for t, _, _ in COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS) + "\n"
    return head + "".join(f"| {row['name']} | " + " | ".join(cells(row)) + " |\n" for row in rows)


def parse_vocoder(text):
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--vocoder {text!r}: give NAME=PATH")
    return name, path


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test_csv", required=True, help="held-out clips (split CSV with path and label)")
    p.add_argument("--classifier", required=True, help="digit classifier (train_classifier.py classifier_best.pt)")
    p.add_argument(
        "--vocoder",
        type=parse_vocoder,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a vocoder file to score (repeat for several)",
    )
    p.add_argument("--n", type=int, default=0, help="N clips evenly spaced over the CSV (0: all)")
    p.add_argument("--feature_root", default=None, help="feature cache (needed for non-log-mel vocoders)")
    p.add_argument("--griffin_lim_iters", type=int, default=GRIFFIN_LIM_LISTENING_ITERS)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if args.n < 0 or args.batch_size < 1 or args.griffin_lim_iters < 1:
        p.error("--n must be >= 0, --batch_size and --griffin_lim_iters >= 1")
    rows = evaluate_vocoders(
        args.test_csv,
        args.classifier,
        args.vocoder,
        n=args.n,
        feature_root=args.feature_root,
        griffin_lim_iters=args.griffin_lim_iters,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(markdown(rows))
    if args.json:
        write_text(args.json, json.dumps({"rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    cli.command(main)
