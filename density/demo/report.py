"""The demo report: <demo_dir>/report.md and a static report.html (an audio player beside each spectrogram).

    python -m density.report --demo_dir outputs/demo

Reads what the demo's stages left in <demo_dir>: the training run's tensorboard scalars (asgan/logs) and newest
checkpoint (asgan/ckpt_*.pt: its steps and batch size), the generated wavs (samples/), the corpus's splits,
metrics_trained.json / metrics_init.json (evaluate.py --json), timings.json and the demo's digit classifier
(classifier/classifier_best.pt: the digit it hears in each sample and its probability, as the studio's Generate tab
shows them); writes report_spectrograms.png (real vs generated), report_curves.png (losses, ADA p, validation
FAD), one small PNG per generated sample, report.md and report.html.
"""

import argparse
import csv
import html
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from density.audio.plots import curves_figure, save_figure, spectrogram_figure, write_spectrogram
from density.audio.signal import fit_length, load_audio, log_mel
from density.config import config_from_yaml
from density.data.splits import read_split_csv
from density.evaluation.classifier import CLIP_SAMPLES, load_classifier
from density.evaluation.vocoders import COLUMNS as VOCODER_COLUMNS
from density.evaluation.vocoders import cells, markdown
from density.runtime import cli
from density.runtime.fileio import load_torch, write_text
from density.runtime.run import periodic_checkpoints

VOCODER_NOTE = (
    "Vocoders trained by `make demo-vocoder` (train_vocoder.py, one CPU thread each) and Griffin-Lim, "
    "each given the log-mels of the test clips (density.vocoder_eval): multi-resolution STFT distance and "
    "log-mel L1 to the clips, digit-classifier accuracy and NLL of the reconstructions."
)
VOCODER_STAGE = " (make demo-vocoder: not in the total)"
CAPTION_NOTE = "Under each sample: the digit the demo's classifier hears in it and its probability."
PAPER_STEPS, PAPER_BATCH = 520_000, 16  # the released HuBERT model (ckpt_00520000), the paper command's batch size
GRID = 8  # spectrograms per row of the real-vs-generated grid
CURVES = (
    ("training/d_loss_smooth", "D loss (smoothed)"),
    ("training/g_loss_smooth", "G loss (smoothed)"),
    ("data/ada_p", "ADA p"),
    ("validation/fad", "validation FAD (log-mel frames)"),
)
METRICS = (
    ("fid", "FID ↓"),
    ("inception_score", "IS ↑"),
    ("modified_inception_score", "mIS ↑"),
    ("am_score", "AM ↓"),
    ("ndb_over_k", "NDB/K ↓"),
    ("linear_separability", "LS"),
)


def machine():
    """'<cpu model>, <n> cores, <os>' of this machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def spectrogram_grid(real, fake, path):
    """Two rows of log-mels (128, frames): real clips above, generated below."""
    n = min(GRID, len(real), len(fake))
    save_figure(
        spectrogram_figure(
            [
                [(f"real: {real[k][0]}", real[k][1]) for k in range(n)],
                [(f"generated {k}", fake[k][1]) for k in range(n)],
            ]
        ),
        path,
    )


def digit_predictions(classifier, wavs):
    """(label, probability) of the classifier's most probable digit for each waveform (B, T) at 16 kHz."""
    probs = classifier.classify(fit_length(wavs, CLIP_SAMPLES))[0].softmax(-1).cpu()
    p, k = probs.max(-1)
    return [(classifier.classes[i], q) for i, q in zip(k.tolist(), p.tolist())]


def heard_as(label, probability):
    """How a clip's caption says what the classifier hears: 'heard as “seven” (93%)'."""
    return f"heard as “{label}” ({probability:.0%})"


def sample_captions(demo_dir, wavs):
    """heard_as of each generated wav by the demo's classifier, or None without classifier/classifier_best.pt."""
    path = Path(demo_dir) / "classifier" / "classifier_best.pt"
    if not wavs or not path.is_file():
        return None
    audio = torch.stack([fit_length(load_audio(w), CLIP_SAMPLES) for w in wavs])
    return [heard_as(label, p) for label, p in digit_predictions(load_classifier(path), audio)]


def training_paragraph(demo_dir):
    """One paragraph on what the metrics mean: how many clips the trained generator saw, against the paper's run."""
    demo_dir = Path(demo_dir)
    ckpts = periodic_checkpoints(demo_dir / "asgan")
    paper = PAPER_STEPS * PAPER_BATCH
    text = (
        "The classifier behind the metrics is the demo's own, trained on the same corpus; the real rows are what "
        "real clips score with it, the mark to aim for. IS runs from 1 (every clip the same digit, or none clearly "
        "one) to 10 (every clip clearly one digit, all ten equally often); FID is the distance between the "
        "classifier's features of the generated and the training clips (0: the same distribution). "
    )
    if not ckpts:
        return (
            text
            + f"The paper's released HuBERT model saw {paper:,} clips ({PAPER_STEPS:,} steps of batch {PAPER_BATCH})."
        )
    ckpt = load_torch(ckpts[-1], "ASGAN checkpoint")
    steps, batch = int(ckpt["steps"]) + 1, int(config_from_yaml(ckpt["cfg_yaml"]).batch_size)
    train_csv = demo_dir / "splits" / "sc09-train.csv"
    n_train = len(read_split_csv(train_csv)[0]) if train_csv.is_file() else None
    passes = f": {steps * batch / n_train:.1f} passes over its {n_train:,} training clips" if n_train else ""
    return text + (
        f"The trained generator saw {steps * batch:,} clips ({steps:,} steps of batch {batch}{passes}) on a CPU; "
        f"the paper's released HuBERT model saw {paper:,} ({PAPER_STEPS:,} steps of batch {PAPER_BATCH}, on a GPU), "
        f"{paper / (steps * batch):,.0f} times as many. The gap to the real rows measures a short run, not the method."
    )


def read_scalars(log_dir):
    """{tag: (steps, values)} of the tensorboard event files in log_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    return {
        tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
        for tag, _ in CURVES
        if tag in tags
    }


def write_curves(scalars, path):
    """The CURVES panels of {tag: (steps, values)} as a PNG."""
    save_figure(curves_figure([(title, *scalars.get(tag, ([], []))) for tag, title in CURVES]), path)


def metric_rows(demo_dir):
    """[(row name, {metric: value, 'n': N})]: the trained and the initial generator (the first row of
    metrics_trained.json / metrics_init.json, written by evaluate.py --json), then the reference rows."""
    trained, init = (
        json.loads((demo_dir / f).read_text())["rows"] for f in ("metrics_trained.json", "metrics_init.json")
    )
    return [("ASGAN, trained (EMA G)", trained[0]), ("ASGAN at initialisation", init[0])] + [
        (row["name"], row) for row in trained[1:]
    ]


def _fmt(v):
    if v is None:
        return "–"
    return str(v) if isinstance(v, int) else f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


def _cell(vals, key):
    """A metric of an evaluate.py row: `mean ± std` where the row has `<key>_std` (evaluate.py --repeats)."""
    std = vals.get(f"{key}_std")
    return _fmt(vals.get(key)) + (f" ± {_fmt(std)}" if std is not None and vals.get(key) is not None else "")


def metrics_markdown(rows):
    head = "| | N | " + " | ".join(t for _, t in METRICS) + " |\n|---|---|" + "---|" * len(METRICS) + "\n"
    return head + "".join(
        f"| {name} | {vals.get('n', '–')} | " + " | ".join(_cell(vals, k) for k, _ in METRICS) + " |\n"
        for name, vals in rows
    )


def real_test_clips(demo_dir, n):
    """[(label, log-mel)] of the first n clips of the test split (one per label first, for variety)."""
    with open(demo_dir / "splits" / "sc09-test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    first = {}
    for row in rows:
        first.setdefault(row["label"], row)
    picked = (list(first.values()) + rows)[:n]
    return [(r["label"], log_mel(load_audio(r["path"]))) for r in picked]


def build(demo_dir):
    """Write the figures, report.md and report.html into demo_dir -> report.md path."""
    demo_dir = Path(demo_dir)
    wavs = sorted((demo_dir / "samples").glob("*.wav"))
    captions = sample_captions(demo_dir, wavs)
    fake = [(w.stem, log_mel(load_audio(w))) for w in wavs]
    for (_, mel), wav in zip(fake, wavs):
        write_spectrogram(wav.with_suffix(".png"), mel)
    spectrogram_grid(real_test_clips(demo_dir, GRID), fake, demo_dir / "report_spectrograms.png")
    write_curves(read_scalars(demo_dir / "asgan" / "logs"), demo_dir / "report_curves.png")
    rows = metric_rows(demo_dir)
    vocoders = vocoder_rows(demo_dir)
    timings = read_timings(demo_dir / "timings.json")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    timing_md = "".join(
        f"| {k}{VOCODER_STAGE * k.startswith('vocoder_')} | {v:.0f} s |\n" for k, v in timings["stages"].items()
    )
    meaning = training_paragraph(demo_dir)
    md = (
        f"# ASGAN demo report\n\n{when}; machine: {machine()}.\n\n"
        "## Metrics\n\nDigit-classifier metrics (evaluate.py); each row says its N.\n\n"
        f"{metrics_markdown(rows)}\n{meaning}\n\n"
        + (f"## Vocoders\n\n{VOCODER_NOTE}\n\n{markdown(vocoders)}\n" if vocoders else "")
        + "## Spectrograms\n\nTop: real test clips. Bottom: generated (EMA generator, seed 0).\n\n"
        "![real vs generated](report_spectrograms.png)\n\n"
        "## Training curves\n\n![curves](report_curves.png)\n\n"
        "## Generated samples\n\n"
        + (CAPTION_NOTE + "\n\n" if captions else "")
        + "".join(
            f"- [{w.name}](samples/{w.name}){f': {c}' if c else ''}\n"
            for w, c in zip(wavs, captions or [None] * len(wavs))
        )
        + f"\n## Stage timings\n\n{timings['note']}\n\n| stage | time |\n|---|---|\n{timing_md}"
        f"| total (wall clock) | {timings['total']:.0f} s |\n"
    )
    write_text(demo_dir / "report.md", md)
    write_text(demo_dir / "report.html", to_html(rows, wavs, timings, when, vocoders, captions, meaning))
    return demo_dir / "report.md"


def read_timings(path):
    """demo.py's timings.json -> {'stages': {name: s}, 'total': wall-clock s, 'note': which lanes overlapped}."""
    t = json.loads(Path(path).read_text()) if Path(path).exists() else {"stages": {}, "side_by_side": []}
    lanes = [" -> ".join(lane) for lane in t.get("side_by_side", [])]
    note = (
        f"Side by side, one CPU thread each: {' and '.join(lanes)}; the total counts the longer lane."
        if lanes
        else "Stages ran one after another."
    )
    return dict(stages=t["stages"], total=t.get("total", sum(t["stages"].values())), note=note)


def vocoder_rows(demo_dir):
    """The rows of <demo_dir>/vocoder_metrics.json (make demo-vocoder), or None."""
    path = Path(demo_dir) / "vocoder_metrics.json"
    return json.loads(path.read_text())["rows"] if path.exists() else None


def to_html(rows, wavs, timings, when, vocoders=None, captions=None, meaning=""):
    """report.html; captions: what the classifier hears in each wav (or None), meaning: training_paragraph."""
    esc = html.escape
    captions = captions or [None] * len(wavs)
    vocoder_html = (
        (
            "<h2>Vocoders</h2><p>"
            + esc(VOCODER_NOTE)
            + "</p><table><tr><th></th>"
            + "".join(f"<th>{esc(t)}</th>" for t, _, _ in VOCODER_COLUMNS)
            + "</tr>"
            + "".join(
                f"<tr><td>{esc(row['name'])}</td>" + "".join(f"<td>{esc(c)}</td>" for c in cells(row)) + "</tr>"
                for row in vocoders
            )
            + "</table>"
        )
        if vocoders
        else ""
    )
    table = (
        "<table><tr><th></th><th>N</th>"
        + "".join(f"<th>{esc(t)}</th>" for _, t in METRICS)
        + "</tr>"
        + "".join(
            f"<tr><td>{esc(name)}</td><td>{esc(str(vals.get('n', '–')))}</td>"
            + "".join(f"<td>{esc(_cell(vals, k))}</td>" for k, _ in METRICS)
            + "</tr>"
            for name, vals in rows
        )
        + "</table>"
    )
    samples = "".join(
        f'<figure><img src="samples/{esc(w.with_suffix(".png").name)}" alt="{esc(w.stem)}">'
        f'<audio controls preload="auto" src="samples/{esc(w.name)}"></audio>'
        f"<figcaption>{esc(w.stem)}{'<br>' + esc(c) if c else ''}</figcaption></figure>"
        for w, c in zip(wavs, captions)
    )
    timing = "".join(f"<tr><td>{esc(k)}</td><td>{v:.0f} s</td></tr>" for k, v in timings["stages"].items())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ASGAN demo report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}
figure{{display:inline-block;margin:6px}} figure img{{display:block;width:216px}} audio{{width:216px}}</style>
</head><body>
<h1>ASGAN demo report</h1><p>{esc(when)}; machine: {esc(machine())}.</p>
<h2>Metrics</h2><p>Digit-classifier metrics (evaluate.py); each row says its N.</p>{table}
<p>{esc(meaning)}</p>
{vocoder_html}
<h2>Spectrograms</h2><p>Top: real test clips. Bottom: generated (EMA generator, seed 0).</p>
<img src="report_spectrograms.png" alt="real vs generated log-mel spectrograms" style="max-width:100%">
<h2>Training curves</h2><img src="report_curves.png" alt="training curves" style="max-width:100%">
<h2>Generated samples</h2>{"<p>" + esc(CAPTION_NOTE) + "</p>" if any(captions) else ""}{samples}
<h2>Stage timings</h2><p>{esc(timings["note"])}</p>
<table>{timing}<tr><td>total (wall clock)</td><td>{timings["total"]:.0f} s</td></tr></table>
</body></html>
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo_dir", required=True, help="the folder demo.py writes into")
    args = p.parse_args(argv)
    print(f"wrote {build(args.demo_dir)} and report.html")


if __name__ == "__main__":
    cli.command(main)
