"""Diagnostics for log-mel ASGAN models: can the generator fit real clips, what does the discriminator look at, and
what must a generator get right to be recognised by the evaluation classifier?

    python diagnose.py fit --features outputs/demo/features preset=mel_small rp_w_cfg.init_B_std=2 lr=1e-2
    python diagnose.py probe --checkpoint outputs/demo/asgan/ckpt_00001999.pt --features outputs/demo/features
    python diagnose.py ceiling --classifier outputs/demo/classifier/classifier_best.pt \
        --train_csv outputs/demo/splits/sc09-train.csv --test_csv outputs/demo/splits/sc09-test.csv

`fit` and `probe` take n clips of a feature folder (every *.pt under it, as train_asgan.py's train_root; log-mels
only), drawn with --seed and cut to the model's seq_len. A clip's *word frames* are those whose mean log-mel is
above -8 (silence is log 1e-5 = -11.5; spoken frames are above -8).

`fit` trains a generator of the configuration given by the dotted overrides (as for train_asgan.py; its lr and
betas) by regression instead of a GAN: one fixed z per clip, L1 to the clip on the training scale (standardised if
normalize_features, with the mean and std of every file in the folder), batches of --batch_size. At the end it
prints the L1 over all n clips next to the *static L1*: that of the same clips with the word frames replaced by
their mean spectrum. A fit below the static L1 reproduces
movement inside the word (formant and pitch glides), not only where the word is and its average colour. It writes
the real and the fitted spectrograms of the first 8 clips to --png.

`probe` prints the discriminator's mean logit (a training checkpoint's d_state_dict) for the clips as they are,
with their word frames reversed, shuffled, or replaced by their mean spectrum, for n samples of the EMA generator
(seed --seed), and for those samples with every non-word frame set to exact silence (log 1e-5). A discriminator
that scores reversed, shuffled and stationary words like real ones gives the generator no reason to make the word
move; one that scores the silenced samples far above the samples tells them apart by their silence.

`ceiling` scores n real test clips (drawn with --seed) with evaluate.py's classifier metrics (FID against the training
split, IS) after Griffin-Lim from their log-mels: as they are, with their word frames set to their mean spectrum (a
generator that places and colours the word but does not move it), and with time detail reduced to K frames per second
for each K of --frames (the log-mels averaged over K equal spans, then linearly interpolated back). It shows how much
temporal detail a generator needs for a given IS.
"""

import argparse
import random

import torch
import torch.nn.functional as F
from tqdm import tqdm

from density.audio.plots import save_figure, spectrogram_figure
from density.audio.signal import LOG_MEL_SILENCE, SAMPLE_RATE, check_audio_files, fit_length, log_mel
from density.config import config_from_yaml, parse_config
from density.data.splits import read_split_csv
from density.dataset import Collate, FeatureDataset, FeatureNorm, discover_files
from density.evaluation import scoring
from density.evaluation.classifier import file_sha256, load_classifier
from density.gan.training import build_g_optimizer
from density.models import Discriminator, Generator
from density.runtime import cli
from density.runtime.checkpoint import load as load_checkpoint
from density.vocoders.vocoder import GRIFFIN_LIM_SCORING_ITERS, GriffinLimVocoder

WORD_LOG_MEL = -8.0  # a frame whose mean log-mel is above this is part of the word
PNG_CLIPS = 8
BATCH = 64  # clips per forward pass when scoring


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a generator to real clips by L1 regression")
    probe = sub.add_parser("probe", help="a checkpoint's discriminator logits for edited real and generated clips")
    ceiling = sub.add_parser("ceiling", help="classifier metrics of real test clips with simplified words")
    for q in (fit, probe):
        q.add_argument("--features", required=True, help="folder of log-mel .pt files (searched recursively)")
        q.add_argument("--n", type=int, default=128, help="number of real clips (and generated samples)")
        q.add_argument("--seed", type=int, default=0, help="seed of the clip draw, z and the batches")
    fit.add_argument("overrides", nargs="*", help="config overrides key=value, as for train_asgan.py")
    fit.add_argument("--steps", type=int, default=1500, help="regression steps")
    fit.add_argument("--batch_size", type=int, default=16)
    fit.add_argument("--png", default="fit.png", help="real (top) and fitted (bottom) spectrograms")
    probe.add_argument("--checkpoint", required=True, help="training checkpoint (d_state_dict, g_ema_state_dict)")
    ceiling.add_argument("--classifier", required=True, help="train_classifier.py's classifier_best.pt")
    ceiling.add_argument("--train_csv", required=True, help="split_data.py CSV of the training clips (FID reference)")
    ceiling.add_argument("--test_csv", required=True, help="split_data.py CSV of the test clips that are edited")
    ceiling.add_argument("--n", type=int, default=512, help="number of test clips (default 512)")
    ceiling.add_argument("--seed", type=int, default=0, help="seed of the clip draw")
    ceiling.add_argument(
        "--frames",
        type=int,
        nargs="+",
        default=[6, 12, 24],
        help="time resolutions to try, in frames per second (default 6 12 24)",
    )
    ceiling.add_argument("--griffin_lim_iters", type=int, default=GRIFFIN_LIM_SCORING_ITERS)
    ceiling.add_argument("--cache_dir", default=None, help="evaluate.py's cache of the training split's scores")
    args = p.parse_args(argv)
    if args.n < 1 or getattr(args, "steps", 1) < 1 or getattr(args, "batch_size", 1) < 1:
        p.error("--n, --steps and --batch_size must be >= 1")
    if min(getattr(args, "frames", [1])) < 1:
        p.error("--frames must be >= 1")
    return args


def real_clips(features, cfg, n, seed):
    """n clips of the folder, drawn with seed, cut or padded to seq_len as in training -> (raw (n, L, C), dataset)."""
    if cfg.data_type != "melspec":
        raise ValueError(f"diagnose.py works on log-mel models; this one has data_type={cfg.data_type}")
    files = discover_files(features)
    random.Random(seed).shuffle(files)
    data = FeatureDataset(files, "melspec", cfg.z_dim, c_dim=cfg.c_dim)
    if n > len(data):
        raise ValueError(f"--n {n}: {features} holds only {len(data)} feature files; give --n {len(data)} or less")
    random.seed(seed)  # the collate's crop offsets
    return Collate.from_config(cfg)([data[i] for i in range(n)])[0], data


def word_frames(x):
    """raw log-mels (B, L, C) -> (B, L) bool: frames of the word."""
    return x.mean(-1) > WORD_LOG_MEL


def edit_words(x, how, generator=None):
    """raw log-mels (B, L, C) with each clip's word frames reversed, shuffled or set to their mean ('static')."""
    out = x.clone()
    for clip, frames in zip(out, word_frames(x)):
        idx = frames.nonzero()[:, 0]  # [F] word frame indices
        if len(idx) == 0:
            continue
        if how == "static":
            clip[idx] = clip[idx].mean(0)
        elif how == "reversed":
            clip[idx] = clip[idx.flip(0)]
        else:
            clip[idx] = clip[idx[torch.randperm(len(idx), generator=generator)]]
    return out


def silence_outside_words(x):
    """raw log-mels (B, L, C) with every non-word frame set to digital silence."""
    return torch.where(word_frames(x)[:, :, None], x, torch.full_like(x, LOG_MEL_SILENCE))


def time_resolution(x, frames):
    """raw log-mels (B, L, C) averaged over `frames` equal spans of the clip, then linearly interpolated back to L."""
    coarse = F.interpolate(x.transpose(1, 2), size=frames, mode="area")  # [B, C, frames]
    return F.interpolate(coarse, size=x.shape[1], mode="linear", align_corners=False).transpose(1, 2)  # [B, L, C]


def batched(fn, x):
    with torch.no_grad():
        return torch.cat([fn(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def fit(args):
    cfg = parse_config(args.overrides)
    x, data = real_clips(args.features, cfg, args.n, args.seed)
    norm = FeatureNorm.fit(data) if cfg.normalize_features else FeatureNorm()
    target = norm.normalize(x)  # [n, L, C] the training scale
    torch.manual_seed(args.seed)
    g = Generator(cfg.rp_w_cfg).train()
    z = torch.randn(args.n, g.z_dim)  # [n, z_dim] one fixed latent per clip
    opt = build_g_optimizer(cfg, g)
    bar = tqdm(range(args.steps), desc="fitting", unit="step")
    for _ in bar:
        idx = torch.randint(0, args.n, (args.batch_size,))
        loss = (g(z[idx], update_ema=True) - target[idx]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(l1=f"{loss.item():.3f}", refresh=False)
    g.eval()
    y = batched(g, z)  # [n, L, C]
    l1 = (y - target).abs().mean().item()
    static = (norm.normalize(edit_words(x, "static")) - target).abs().mean().item()
    print(
        f"L1 of the fit over {args.n} clips: {l1:.4f}; static L1 (word frames set to their mean spectrum): "
        f"{static:.4f}; {'below' if l1 < static else 'not below'} it"
    )
    k = min(PNG_CLIPS, args.n)
    fitted = norm.denormalize(y[:k])
    save_figure(
        spectrogram_figure([[(f"real {i}", x[i].T) for i in range(k)], [(f"fit {i}", fitted[i].T) for i in range(k)]]),
        args.png,
    )
    print(f"spectrograms: {args.png}")
    return 0


def probe(args):
    ckpt = load_checkpoint(args.checkpoint, required=("cfg_yaml", "d_state_dict", "g_ema_state_dict"))
    cfg = config_from_yaml(ckpt["cfg_yaml"])
    x, _ = real_clips(args.features, cfg, args.n, args.seed)
    norm = FeatureNorm.from_checkpoint(ckpt)
    d, g = Discriminator.from_config(cfg), Generator(cfg.rp_w_cfg)
    d.load_state_dict(ckpt["d_state_dict"])
    g.load_state_dict(ckpt["g_ema_state_dict"])
    d.eval()
    g.eval()
    rng = torch.Generator().manual_seed(args.seed)  # the samples' z, then the shuffle
    fake = norm.denormalize(batched(g, torch.randn(args.n, g.z_dim, generator=rng)))  # [n, L, C] raw
    rows = [
        ("real clips", x),
        ("real, word frames reversed", edit_words(x, "reversed")),
        ("real, word frames shuffled", edit_words(x, "shuffled", rng)),
        ("real, word frames set to their mean", edit_words(x, "static")),
        ("generated (EMA G)", fake),
        ("generated, non-word frames silenced", silence_outside_words(fake)),
    ]
    print(f"mean discriminator logit over {args.n} clips ({args.checkpoint}, step {ckpt.get('steps')}):")
    for name, clips in rows:
        print(f"  {name:<40} {batched(d, norm.normalize(clips)).mean().item():8.3f}")
    return 0


def ceiling(args):
    paths, _ = read_split_csv(args.test_csv)
    random.Random(args.seed).shuffle(paths)
    if args.n > len(paths):
        raise ValueError(f"--n {args.n}: {args.test_csv} lists only {len(paths)} clips; give --n {len(paths)} or less")
    paths = paths[: args.n]
    check_audio_files(paths)  # before the slow scoring of the training split
    classifier = load_classifier(args.classifier)
    train = scoring.cached_scores(classifier, file_sha256(args.classifier), args.train_csv, "real", args.cache_dir)
    reference = scoring.make_reference(train, ndb_k=0)
    wav = torch.cat(list(scoring.load_batches(paths, BATCH)))  # [n, T]
    x = log_mel(wav).transpose(1, 2)  # [n, L, C]
    vocoder = GriffinLimVocoder(n_iter=args.griffin_lim_iters)
    rows = [("real test clips", x), ("word frames set to their mean", edit_words(x, "static"))]
    rows += [(f"{k} frames per second", time_resolution(x, k)) for k in args.frames]
    print(
        f"{args.n} test clips through Griffin-Lim ({args.griffin_lim_iters} iterations), scored by {args.classifier}:"
    )
    for name, clips in rows:
        audio = batched(lambda c: fit_length(vocoder(c).squeeze(1), SAMPLE_RATE), clips)  # [n, 16000]
        row = scoring.row_metrics(name, scoring.score_wavs(classifier, audio, BATCH, desc=name), reference)
        print(f"  {name:<32} FID {row['fid']:8.2f}   IS {row['inception_score']:6.2f}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    return {"fit": fit, "probe": probe, "ceiling": ceiling}[args.command](args)


if __name__ == "__main__":
    cli.command(main)
