"""Latent-space tools for an ASGAN checkpoint: project real speech into W, style mixing, voice conversion, attribute
directions and a linear probe (Baas & Kamper 2022; operations in density/latent.py).

    python edit.py project   --checkpoint C --out_dir D a.wav b.wav
    python edit.py mix       --checkpoint C --out_dir D --a a.wav --b seed:7 --crossover 2 4
    python edit.py convert   --checkpoint C --out_dir D --source a.wav --target b.wav --layers 4 5
    python edit.py direction --checkpoint C --out_dir D --csv splits/sc09-train.csv --labels two three \\
                             --apply a.wav --strengths 0 0.5 1
    python edit.py probe     --checkpoint C --out_dir D --train_csv splits/sc09-train.csv \\
                             --test_csv splits/sc09-test.csv --n_train 500 --n_test 200

An INPUT is a 16 kHz wav (projected into the generator's latent space: Adam from the mean w on the checkpoint's own
feature front end, log-mels or HuBERT layer-L frames, normalised like its training data) or `seed:N` (the latent of
generate.py's first sample of --seed N). Per-layer w index 0 is the Fourier input, 1..n_layers the synthesis
layers (coarse to fine), n_layers+1 the head. Wavs come out through the checkpoint's vocoder (--vocoder, Griffin-Lim
for a mel checkpoint without one), with a PNG of source / target / result log-mel spectrograms. Every output name is
checked before the checkpoint loads: two inputs with one output name are refused, and files already in --out_dir
are replaced only with --overwrite.
"""

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from density.audio.plots import write_spectrogram_grid
from density.audio.signal import CLIP_SAMPLES, SAMPLE_RATE, fit_length, load_audio, log_mel, save_wav
from density.data.splits import class_order, read_split_csv
from density.features.hubert import Featurizer
from density.inference import latent
from density.inference.asgan import load_asgan
from density.models import Generator
from density.runtime import cli
from density.runtime.download import fetch
from density.runtime.engine import resolve_device
from density.runtime.fileio import remove_stale_temporaries, save_torch, write_text
from density.runtime.outputs import add_overwrite_flag, plan_outputs

SEED_PREFIX = "seed:"
RANDOM_G_SEED = 0  # weights of the randomly initialised generator behind the probe's baseline
CALIBRATION_Z = 256  # latents that calibrate the random generator's norm_ema (Generator.calibrate_norm_ema)
PNG_NAME = "spectrograms.png"
MAX_LR = 10.0  # Adam steps of more than 10 spreads of w leave the generator's range: the projection is noise
MAX_STRENGTH = 10.0  # an edit 10 times the distance between the two labels' mean w is far outside the data


def _common(p):
    p.add_argument("--checkpoint", required=True, help="ASGAN training checkpoint (cfg_yaml + g_ema_state_dict)")
    p.add_argument("--vocoder", help="vocoder file or URL (default: as generate.py: Griffin-Lim for melspec)")
    p.add_argument("--hubert", help="fairseq HuBERT checkpoint: the feature front end of a hubert_L* checkpoint")
    p.add_argument("--out_dir", required=True, help="folder for the outputs (created)")
    p.add_argument(
        "--space", choices=latent.SPACES, default="w", help="projection space: one w, one w per layer (w+), or z"
    )
    p.add_argument("--steps", type=int, default=300, help="Adam steps of a projection")
    p.add_argument(
        "--lr", type=float, default=0.1, help=f"Adam learning rate, in units of the spread of w (0 < lr <= {MAX_LR:g})"
    )
    p.add_argument("--loss", choices=latent.LOSSES, help="feature loss (default: l1 for log-mels, cosine for HuBERT)")
    p.add_argument("--batch_size", type=int, default=64, help="clips projected together")
    p.add_argument(
        "--w_avg_samples",
        type=int,
        default=latent.W_AVG_SAMPLES,
        help="random z behind the mean w (cached next to the checkpoint)",
    )
    p.add_argument("--resample", action="store_true", help="resample wavs that are not at 16 kHz")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_overwrite_flag(p, "files already in --out_dir", "the checkpoint loads")


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("project", help="project wavs into the latent space and resynthesise them")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="wav files (or seed:N)")
    s = sub.add_parser("mix", help="style mixing: coarse layers from --a, fine layers from --b")
    s.add_argument("--a", required=True, metavar="INPUT", help="source of the coarse layers")
    s.add_argument("--b", required=True, metavar="INPUT", help="source of the fine layers")
    s.add_argument(
        "--crossover",
        type=int,
        nargs="+",
        required=True,
        metavar="K",
        help="first per-layer w index taken from --b (one output per K; n_layers+2 = all from --a)",
    )
    s = sub.add_parser("convert", help="voice conversion: the w of --layers from --target, the rest from --source")
    s.add_argument("--source", required=True, metavar="INPUT")
    s.add_argument("--target", required=True, metavar="INPUT")
    s.add_argument("--layers", type=int, nargs="*", required=True, metavar="I", help="per-layer w indices to swap")
    s = sub.add_parser("direction", help="attribute direction mean(w of TO) - mean(w of FROM), applied to inputs")
    s.add_argument("--csv", required=True, help="split CSV (path,label) as written by split_data.py")
    s.add_argument("--labels", nargs=2, required=True, metavar=("FROM", "TO"))
    s.add_argument("--per_label", type=int, default=50, help="clips projected per label (a seeded random subset)")
    s.add_argument("--apply", nargs="+", required=True, metavar="INPUT", help="inputs to edit")
    s.add_argument(
        "--strengths",
        type=float,
        nargs="+",
        default=[0.0, 0.5, 1.0, 1.5],
        help=f"multiples of the direction added to each input's w, in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}]",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the clip subset")
    s = sub.add_parser("probe", help="logistic-regression probe of the label on projected latents, with baselines")
    s.add_argument("--train_csv", required=True)
    s.add_argument("--test_csv", required=True)
    s.add_argument("--n_train", type=int, default=500, help="training clips (a seeded random subset)")
    s.add_argument("--n_test", type=int, default=200, help="test clips (a seeded random subset)")
    s.add_argument("--seed", type=int, default=0, help="seed of the clip subsets")
    for s in sub.choices.values():
        _common(s)
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p, args):
    """Usage errors (p.error: exit 2), found before any work: values that would fail late or write garbage."""
    if args.steps < 1 or args.batch_size < 1 or args.w_avg_samples < 1:
        p.error("--steps, --batch_size, --w_avg_samples must be >= 1")
    if not 0 < args.lr <= MAX_LR:
        p.error(f"--lr {args.lr:g} is outside (0, {MAX_LR:g}]: it is in units of the spread of w (default 0.1)")
    bad = [s for s in getattr(args, "strengths", []) if not abs(s) <= MAX_STRENGTH]
    if bad:
        p.error(
            f"--strengths {' '.join(f'{s:g}' for s in bad)}: each must be a number in "
            f"[-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}] (1 moves from the FROM to the TO label's mean w)"
        )
    if min(getattr(args, "per_label", 1), getattr(args, "n_train", 1), getattr(args, "n_test", 1)) < 1:
        p.error("--per_label, --n_train, --n_test must be >= 1")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        p.error(f"--out_dir {args.out_dir} is a file; give a folder (it is created if missing)")
    for name in ("inputs", "a", "b", "source", "target", "apply"):
        for spec in [getattr(args, name)] if isinstance(getattr(args, name, None), str) else getattr(args, name, []):
            if spec.startswith(SEED_PREFIX) and not spec[len(SEED_PREFIX) :].lstrip("-").isdigit():
                p.error(f"{spec}: a seed input is seed:<integer>")


class FrontEnd:
    """16 kHz clips (B, T) -> the checkpoint's training features (B, seq_len, c_dim): log-mels or HuBERT layer-L
    frames of each clip fitted to 1 s (`fit_length`), centre-cropped to the generator's length and normalised with
    the checkpoint's FeatureNorm."""

    def __init__(self, model, hubert=None):
        data_type = model.cfg.data_type
        if data_type.startswith("hubert_L") and hubert is None:
            raise ValueError(
                f"this is a {data_type} checkpoint: reading real speech needs its HuBERT model, "
                "--hubert <fairseq HuBERT checkpoint>"
            )
        if data_type not in ("melspec",) and not data_type.startswith("hubert_L"):
            raise ValueError(
                f"data_type '{data_type}' checkpoints have no feature front end; latent tools need a "
                "melspec or hubert_L<n> checkpoint"
            )
        self.featurize = Featurizer(data_type, hubert, model.device)
        self.norm, self.length, self.c_dim = model.feature_norm, model.g.seq_len, model.g.c_dim

    @torch.no_grad()
    def __call__(self, wavs):
        x = self.featurize(fit_length(wavs, CLIP_SAMPLES)).float()  # (B, frames, C)
        if x.shape[2] != self.c_dim:
            raise ValueError(
                f"the front end gives {x.shape[2]}-dim features but the generator makes "
                f"{self.c_dim}: wrong --hubert model or layer for this checkpoint?"
            )
        start = (x.shape[1] - self.length) // 2
        return self.norm.normalize(x[:, start : start + self.length]).cpu()


class Tools:
    """A loaded checkpoint with its front end and mean w: turns INPUTs into latents and latents into wavs."""

    def __init__(self, args):
        self.args = args
        self.progress = not args.no_progress
        self.model = load_asgan(args.checkpoint, args.vocoder, resolve_device(args.device), progress=self.progress)
        self.front_end = FrontEnd(self.model, args.hubert)
        self.stats = latent.w_stats(
            self.model.g, args.w_avg_samples, fetch(args.checkpoint, progress=self.progress), self.progress
        )
        self.loss = args.loss or latent.default_loss(self.model.cfg.data_type)

    def features(self, paths):
        """Wav files -> (waveforms (B, 16000), features (B, seq_len, c_dim))."""
        wavs = torch.stack([fit_length(load_audio(p, resample=self.args.resample), CLIP_SAMPLES) for p in paths])
        return wavs, self.front_end(wavs)

    def project(self, feats, g=None, stats=None, space=None):
        """Projection of features with the command-line settings (g, stats, space default to the checkpoint's)."""
        a = self.args
        return latent.project(
            g or self.model.g,
            feats,
            stats=stats or self.stats,
            space=space or a.space,
            steps=a.steps,
            lr=a.lr,
            loss=self.loss,
            batch_size=a.batch_size,
            progress=self.progress,
        )

    def latents(self, specs):
        """INPUTs -> (w (N, n_ws, w_dim), input waveforms (N, 16000)); wavs are projected, seeds mapped."""
        n_ws = self.model.g.n_layers + 2
        ws, wavs = [None] * len(specs), [None] * len(specs)
        files = [i for i, s in enumerate(specs) if not s.startswith(SEED_PREFIX)]
        if files:
            audio, feats = self.features([specs[i] for i in files])
            w = latent.broadcast(self.project(feats).w, n_ws)
            for k, i in enumerate(files):
                ws[i], wavs[i] = w[k], audio[k]
        for i, s in enumerate(specs):
            if s.startswith(SEED_PREFIX):
                z = torch.randn(
                    1, self.model.z_dim, generator=torch.Generator().manual_seed(int(s[len(SEED_PREFIX) :]))
                )
                ws[i] = latent.broadcast(self.model.z2w(z).cpu(), n_ws)[0]
                wavs[i] = self.synthesise(ws[i][None])[0]
        return torch.stack(ws), torch.stack(wavs)

    @torch.no_grad()
    def generate_features(self, ws):
        """(N, [n_ws,] w_dim) -> the generator's features (N, seq_len, c_dim) on the CPU."""
        return self.model.g.forward_w(ws.to(self.model.device)).cpu()

    def synthesise(self, ws):
        """(N, [n_ws,] w_dim) -> (N, 16000) waveforms on the CPU, one clip at a time: Griffin-Lim's random initial
        phase depends on the batch, and each output should not depend on which others are asked for."""
        return torch.cat([self.model.generate_from_w(w[None]).cpu() for w in ws])


def stem(spec):
    return spec.replace(":", "") if spec.startswith(SEED_PREFIX) else Path(spec).stem


def projected_name(spec):
    """The output name (without .wav) of INPUT spec resynthesised from its projection."""
    return f"{stem(spec)}_projected"


def edited_name(spec, label, strength):
    """The output name (without .wav) of INPUT spec edited toward label with a strength."""
    return f"{stem(spec)}_{label}{strength:+g}"


def direction_name(labels):
    return f"direction_{labels[0]}_to_{labels[1]}.pt"


def output_files(args):
    """[(what it comes from, file name in --out_dir)] of every file the sub-command writes."""
    grid = ("the spectrogram grid", PNG_NAME)
    if args.command == "project":
        wavs = [(spec, f"{projected_name(spec)}.wav") for spec in args.inputs]
        return [*wavs, grid, ("the projection", "projection.json"), ("the projection", "projection.pt")]
    if args.command == "mix":
        return [*((f"--crossover {k}", f"mix_{k}.wav") for k in args.crossover), grid]
    if args.command == "convert":
        return [("the conversion", "converted.wav"), grid]
    if args.command == "direction":
        to = args.labels[1]
        edits = [(f"{spec} at {s:g}", f"{edited_name(spec, to, s)}.wav") for spec in args.apply for s in args.strengths]
        return [("--labels", direction_name(args.labels)), *edits, grid]
    return [("the probe", "probe.json")]


def write_outputs(out_dir, rows, png_columns):
    """rows: [(name, waveform (16000,), is_output)] -> outputs saved as <name>.wav, every row in spectrograms.png."""
    for name, wav, is_output in rows:
        if is_output:
            save_wav(out_dir / f"{name}.wav", wav, SAMPLE_RATE)
    write_spectrogram_grid(
        out_dir / PNG_NAME, [log_mel(w) for _, w, _ in rows], [n for n, _, _ in rows], columns=png_columns
    )


def labelled_subset(csv, n, seed, labels=None):
    """(paths, labels) of a seeded random subset of n rows of a split CSV (only `labels` rows if given)."""
    paths, names = read_split_csv(csv)
    rows = [i for i, name in enumerate(names) if labels is None or name in labels]
    if labels is not None:
        missing = sorted(set(labels) - {names[i] for i in rows})
        if missing:
            raise ValueError(f"{csv}: no clips labelled {missing}")
    rows = sorted(random.Random(seed).sample(rows, min(n, len(rows))))
    return [paths[i] for i in rows], [names[i] for i in rows]


def cmd_project(tools, out_dir):
    args = tools.args
    ws, wavs = tools.latents(args.inputs)
    feats = tools.front_end(wavs)
    errors = latent.feature_loss(tools.generate_features(ws), feats, tools.loss)
    avg_errors = latent.feature_loss(tools.generate_features(tools.stats.w_avg.expand(len(ws), -1)), feats, tools.loss)
    resynth = tools.synthesise(ws)
    rows = []
    for spec, wav, out in zip(args.inputs, wavs, resynth):
        rows += [(stem(spec), wav, False), (projected_name(spec), out, True)]
    write_outputs(out_dir, rows, png_columns=2)
    result = {
        "inputs": args.inputs,
        "space": args.space,
        "loss": tools.loss,
        "steps": args.steps,
        "error": errors.tolist(),
        "w_avg_error": avg_errors.tolist(),
    }
    write_text(out_dir / "projection.json", json.dumps(result, indent=1) + "\n")
    save_torch({"inputs": args.inputs, "ws": ws, "error": errors}, out_dir / "projection.pt")
    return (
        f"projected {len(ws)} clips: mean {tools.loss} error {errors.mean():.4f} (the mean w's: "
        f"{avg_errors.mean():.4f})"
    )


def cmd_mix(tools, out_dir):
    args = tools.args
    ws, wavs = tools.latents([args.a, args.b])
    mixed = torch.cat([latent.mix(ws[:1], ws[1:], k) for k in args.crossover])
    rows = [(f"a_{stem(args.a)}", wavs[0], False), (f"b_{stem(args.b)}", wavs[1], False)]
    rows += [(f"mix_{k}", wav, True) for k, wav in zip(args.crossover, tools.synthesise(mixed))]
    write_outputs(out_dir, rows, png_columns=len(rows))
    return f"wrote {len(args.crossover)} mixes"


def cmd_convert(tools, out_dir):
    args = tools.args
    ws, wavs = tools.latents([args.source, args.target])
    converted = tools.synthesise(latent.swap_layers(ws[:1], ws[1:], args.layers))
    rows = [
        (f"source_{stem(args.source)}", wavs[0], False),
        (f"target_{stem(args.target)}", wavs[1], False),
        ("converted", converted[0], True),
    ]
    write_outputs(out_dir, rows, png_columns=3)
    return "wrote converted.wav"


def cmd_direction(tools, out_dir):
    args = tools.args
    groups = [labelled_subset(args.csv, args.per_label, args.seed, {label})[0] for label in args.labels]
    ws, _ = tools.latents(groups[0] + groups[1])
    d = latent.direction(ws[: len(groups[0])], ws[len(groups[0]) :])
    save_torch(
        {"labels": args.labels, "direction": d, "n": [len(g) for g in groups], "space": args.space},
        out_dir / direction_name(args.labels),
    )
    ws, wavs = tools.latents(args.apply)
    edited = torch.stack([latent.edit(ws, d, s) for s in args.strengths], dim=1)  # (N, S, n_ws, w_dim)
    out = tools.synthesise(edited.flatten(0, 1)).unflatten(0, edited.shape[:2])
    rows = []
    for spec, wav, row in zip(args.apply, wavs, out):
        rows.append((stem(spec), wav, False))
        rows += [(edited_name(spec, args.labels[1], s), w, True) for s, w in zip(args.strengths, row)]
    write_outputs(out_dir, rows, png_columns=len(args.strengths) + 1)
    return f"direction from {len(groups[0])} '{args.labels[0]}' to {len(groups[1])} '{args.labels[1]}' clips"


def random_generator(model):
    """A randomly initialised generator of the checkpoint's architecture (norm_ema calibrated), on its device."""
    torch.manual_seed(RANDOM_G_SEED)
    g = Generator(model.cfg.rp_w_cfg).eval()
    g.calibrate_norm_ema(torch.randn(CALIBRATION_Z, g.z_dim))
    return g.to(model.device)


def probe_accuracy(x_train, y_train, x_test, y_test):
    """Accuracy on the test set of a logistic regression on standardised features x (N, ...) for labels y."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_train.flatten(1).numpy(), y_train)
    return float(clf.score(x_test.flatten(1).numpy(), y_test))


def cmd_probe(tools, out_dir):
    """Probe on projected w of the checkpoint, vs projected z and the w of a random generator of the same shape."""
    args = tools.args
    train_paths, y_train = labelled_subset(args.train_csv, args.n_train, args.seed)
    test_paths, y_test = labelled_subset(args.test_csv, args.n_test, args.seed)
    _, train = tools.features(train_paths)
    _, test = tools.features(test_paths)
    g_rand = random_generator(tools.model)
    probes = {
        f"{args.space} (trained G)": (tools.model.g, tools.stats, args.space, "w"),
        "z (trained G)": (tools.model.g, tools.stats, "z", "z"),
        f"{args.space} (random G)": (g_rand, latent.w_stats(g_rand, args.w_avg_samples), args.space, "w"),
    }
    result = {
        "n_train": len(y_train),
        "n_test": len(y_test),
        "classes": list(class_order(y_train + y_test)),
        "space": args.space,
        "steps": args.steps,
        "loss": tools.loss,
        "probes": {},
    }
    result["chance"] = 1 / len(result["classes"])
    for name, (g, stats, space, field) in probes.items():
        p_train, p_test = (tools.project(x, g, stats, space) for x in (train, test))
        result["probes"][name] = {
            "accuracy": probe_accuracy(getattr(p_train, field), y_train, getattr(p_test, field), y_test),
            "test_error": p_test.error.mean().item(),
        }
    write_text(out_dir / "probe.json", json.dumps(result, indent=1) + "\n")
    lines = [
        f"{name}: accuracy {r['accuracy']:.3f}, test {tools.loss} error {r['test_error']:.4f}"
        for name, r in result["probes"].items()
    ]
    return "\n".join(
        [f"probe on {result['n_train']} train / {result['n_test']} test clips, chance {result['chance']:.3f}"] + lines
    )


COMMANDS = {
    "project": cmd_project,
    "mix": cmd_mix,
    "convert": cmd_convert,
    "direction": cmd_direction,
    "probe": cmd_probe,
}


def run(args):
    """Run a parsed sub-command -> its summary line(s). Its outputs are checked first (density/runtime/outputs.py):
    an output name two inputs share, or a file in --out_dir without --overwrite, is an OutputError."""
    out_dir = Path(args.out_dir)
    plan_outputs(out_dir, output_files(args), overwrite=args.overwrite)
    tools = Tools(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    return COMMANDS[args.command](tools, out_dir)


def main(argv=None):
    """A user error (bad audio, checkpoint, CSV or layer index; unwritable output) exits with status 2 and one
    `error: ...` line (density/cli.py)."""
    print(cli.run(lambda args: run(parse_args(args)), argv), file=sys.stderr)


if __name__ == "__main__":
    cli.command(main)
