"""Generate one-second 16 kHz wavs with ASGAN, plus a PNG grid of their log-mel spectrograms.

    python generate.py --pretrained --out_dir samples --n 64                        # official model (downloads)
    python generate.py --checkpoint runs/ckpt_00100000.pt --vocoder hifigan.pt --out_dir samples
    python generate.py --checkpoint runs/mel/ckpt_00100000.pt --out_dir samples     # mel model: Griffin-Lim
    python generate.py --pretrained --out_dir interp --interpolate 3 7 --space w --steps 10 --truncation 0.7

Sample i of a run is row i of a (n, z_dim) standard-normal draw from a CPU generator seeded with --seed, so
files do not depend on --batch_size or the device (beyond float rounding). Interpolation goes from the latent
of seed A to that of seed B (the first sample of --seed A and of --seed B): spherical in z (`--space z`),
linear in w (`--space w`).
Truncation moves every w toward the mean w of --w_avg_samples random z: w_avg + psi (w - w_avg), psi in
[-2, 2]. The mean w is computed once per checkpoint and cached in a file next to it (density/latent.py).
Files already in --out_dir are never replaced without --overwrite; that is checked before the model loads.
"""

import argparse
import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from density.audio.plots import write_spectrogram_grid
from density.audio.signal import SAMPLE_RATE, log_mel, save_wav
from density.inference.asgan import CHECKPOINT_URL, CHECKPOINT_URL_ENV, load_asgan
from density.inference.latent import W_AVG_SAMPLES, lerp, slerp, truncate, w_stats
from density.runtime import cli
from density.runtime.download import fetch, resolve
from density.runtime.engine import resolve_device
from density.runtime.fileio import remove_stale_temporaries
from density.runtime.outputs import add_overwrite_flag, plan_outputs

PNG_COLUMNS = 8
PNG_NAME = "spectrograms.png"
TRUNCATION_RANGE = (-2.0, 2.0)  # psi: 1 off, 0 the mean w, -1 mirrored; beyond twice the distance is noise


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pretrained", action="store_true", help="official HuBERT SC09 model (torch.hub download)")
    src.add_argument("--checkpoint", help="your own training checkpoint (.pt with cfg_yaml + g_ema_state_dict)")
    p.add_argument(
        "--vocoder",
        help="vocoder file or URL for --checkpoint (default: official HuBERT HiFi-GAN "
        "for hubert_L6 models, Griffin-Lim for melspec models)",
    )
    p.add_argument("--out_dir", required=True, help="folder for the wavs and spectrograms.png (created)")
    p.add_argument("--n", type=int, default=16, help="number of wavs (ignored with --interpolate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draw")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--truncation",
        type=float,
        default=1.0,
        metavar="PSI",
        help=f"truncation psi toward the mean w, in [{TRUNCATION_RANGE[0]:g}, {TRUNCATION_RANGE[1]:g}] "
        "(1 = off, 0 = always the mean)",
    )
    p.add_argument(
        "--w_avg_samples",
        type=int,
        default=W_AVG_SAMPLES,
        help="random z used to estimate the mean w (cached next to the checkpoint)",
    )
    p.add_argument(
        "--interpolate",
        type=int,
        nargs=2,
        metavar=("SEED_A", "SEED_B"),
        help="write an interpolation between the latents of two seeds instead of --n samples",
    )
    p.add_argument("--space", choices=["z", "w"], default="z", help="interpolation space")
    p.add_argument("--steps", type=int, default=8, help="interpolation points, both ends included")
    p.add_argument("--png_max", type=int, default=64, help="most spectrograms in the PNG grid (0: no PNG)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_overwrite_flag(p, "wavs and spectrograms.png already in --out_dir", "the model loads")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p, args):
    """Usage errors (p.error: exit 2), found before the model loads."""
    if args.vocoder and not args.checkpoint:
        p.error("--vocoder goes with --checkpoint")
    if args.n < 1 or args.batch_size < 1 or args.steps < 2 or args.w_avg_samples < 1:
        p.error("--n, --batch_size, --w_avg_samples must be >= 1 and --steps >= 2")
    if not math.isfinite(args.truncation):
        p.error(f"--truncation must be a finite number, got {args.truncation}")
    low, high = TRUNCATION_RANGE
    if not low <= args.truncation <= high:
        p.error(
            f"--truncation {args.truncation:g} is outside [{low:g}, {high:g}]: 1 is no truncation, 0 the mean w, "
            f"values beyond {high:g} times a sample's distance from the mean give noise"
        )
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        p.error(f"--out_dir {args.out_dir} is a file; give a folder (it is created if missing)")
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError:
            p.error(f"--device {args.device}: not a device; use cpu, cuda or cuda:<index>")


def file_stems(args):
    """The names (without .wav) of the wavs, one per latent."""
    if args.interpolate:
        a, b = args.interpolate
        return [f"interp_{args.space}_{a}_{b}_{k:03d}" for k in range(args.steps)]
    return [f"seed{args.seed}_{i:05d}" for i in range(args.n)]


def plan(args):
    """Every output path (the wavs, then spectrograms.png unless --png_max 0), checked before any work: OutputError
    for a file that exists already without --overwrite (density/runtime/outputs.py)."""
    outputs = [(stem, f"{stem}.wav") for stem in file_stems(args)]
    if args.png_max > 0:
        outputs.append(("the spectrogram grid", PNG_NAME))
    return plan_outputs(args.out_dir, outputs, overwrite=args.overwrite)


def latents(model, args):
    """-> (latents (M, z_dim or w_dim) on the CPU, kind 'z' or 'w')."""
    if args.interpolate:
        a, b = (torch.randn(1, model.z_dim, generator=torch.Generator().manual_seed(s)) for s in args.interpolate)
        t = torch.linspace(0, 1, args.steps)
        if args.space == "z":
            return slerp(a, b, t), "z"
        return lerp(model.z2w(a).cpu(), model.z2w(b).cpu(), t), "w"
    return torch.randn(args.n, model.z_dim, generator=torch.Generator().manual_seed(args.seed)), "z"


def main(argv=None):
    """generate.py's command line: a user error (an unreadable checkpoint/vocoder, a failed download, an unwritable
    file) exits with status 2 and one `error: ...` line (density/cli.py)."""
    cli.run(lambda args: generate(parse_args(args)), argv)


def generate(args):
    """Write the wavs and the PNG for parsed arguments."""
    paths = plan(args)
    progress = not args.no_progress
    device = resolve_device(args.device)
    if args.pretrained:
        from density.inference.hub import asgan_hubert_sc09_6

        model = asgan_hubert_sc09_6(pretrained=True, progress=progress, device=device)
    else:
        model = load_asgan(args.checkpoint, args.vocoder, device, progress=progress)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    lat, kind = latents(model, args)
    stems = file_stems(args)
    w_avg = None
    if args.truncation != 1:
        checkpoint = fetch(args.checkpoint or resolve(None, CHECKPOINT_URL_ENV, CHECKPOINT_URL), progress=progress)
        w_avg = w_stats(model.g, args.w_avg_samples, checkpoint, progress).w_avg
    mels, names = [], []
    for start in tqdm(range(0, len(lat), args.batch_size), desc="generate", disable=not progress):
        batch = lat[start : start + args.batch_size]
        if w_avg is not None:
            w = model.z2w(batch).cpu() if kind == "z" else batch
            wavs = model.generate_from_w(truncate(w, w_avg, args.truncation))
        elif kind == "z":
            wavs = model.generate_from_latent(batch)
        else:
            wavs = model.generate_from_w(batch)
        wavs = wavs.cpu()
        for wav, stem, path in zip(wavs, stems[start : start + args.batch_size], paths[start:]):
            save_wav(path, wav, SAMPLE_RATE)
            if len(mels) < args.png_max:
                mels.append(log_mel(wav))
                names.append(stem)
    if mels:
        write_spectrogram_grid(paths[-1], mels, names)
    print(f"wrote {len(stems)} wavs{' and spectrograms.png' if mels else ''} to {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    cli.command(main)
