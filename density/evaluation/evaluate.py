"""ASGAN's evaluation (paper §4, SaShiMi protocol): FID, IS, mIS, AM, NDB/K and linear separability.

Audio mode scores clips with the evaluation classifier (density.evaluation.classifier) and prints a Markdown table with
one row for what is evaluated and reference rows (real train, real test, Griffin-Lim resynthesis of the real
test clips, white noise), each with its N:

    python evaluate.py --checkpoint runs/ckpt_00100000.pt [--vocoder V] --classifier classifier_best.pt \\
        --train_csv splits/sc09-train.csv --test_csv splits/sc09-test.csv [--n 2048] [--json out.json]
    python evaluate.py --pretrained --classifier resnext.pth --train_csv ... --test_csv ...
    python evaluate.py --wav_dir samples/ --classifier ... --train_csv ... --test_csv ...

FID and NDB/K compare classifier features with the training set's, AM compares class distributions with it.
A generator's --n clips come from row i of a seeded (n, z_dim) CPU draw of z (as generate.py), so results are
deterministic for --seed; linear separability uses those z. --repeats K reports every metric as mean ± std over
seeds seed .. seed+K-1 (generator, noise) or K bootstrap resamples (real rows, --wav_dir). --wav_dir scores every
.wav/.flac below DIR (16 kHz; other rates are an error unless --resample). Real-set scores (train, test,
Griffin-Lim) are cached in --cache_dir under a key of the classifier file's SHA-256 and the CSV's contents.
The scoring itself is a library: density.evaluation.scoring. --save_wavs replaces files already in its folder only
with --overwrite, and a --json path that cannot be written is refused before any scoring.

Array mode computes the metrics from saved arrays, each a 2-D array saved as .npy or as a single tensor with
torch.save (loaded with weights_only=True). Every metric whose inputs are given is computed:

    fid, ndb_over_k            --gen_feats and --real_feats (classifier features, (N, C) and (M, C))
    inception_score,
    modified_inception_score   --gen_logits (classifier logits or log-probabilities of generated clips, (N, K))
    am_score                   --gen_logits and --train_logits ((M, K), the training set)
    linear_separability        --gen_logits and --latents (the (N, d) latents that made the clips)

Example:
    python evaluate.py --gen_feats gen_feats.pt --real_feats train_feats.pt --gen_logits gen_logits.pt \\
        --train_logits train_logits.pt --latents gen_z.pt --json metrics.json
"""

import argparse
import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import torch

from density import metrics
from density.audio.signal import AudioError, check_audio_files
from density.evaluation import scoring
from density.evaluation.classifier import ClassifierError, file_sha256, load_classifier
from density.inference.asgan import load_asgan
from density.runtime import cli
from density.runtime.download import DownloadError
from density.runtime.engine import resolve_device
from density.runtime.fileio import write_text
from density.runtime.outputs import OutputError, add_overwrite_flag, plan_outputs, writable_file
from density.vocoders.vocoder import GRIFFIN_LIM_LISTENING_ITERS, GRIFFIN_LIM_SCORING_ITERS, GriffinLimVocoder

INPUTS = ("gen_feats", "real_feats", "gen_logits", "train_logits", "latents")


def load_matrix(path):
    """(N, C) float array from a .npy file or a torch.save'd tensor."""
    try:
        if path.endswith(".npy"):
            x = np.load(path, allow_pickle=False)
        else:
            x = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"evaluate.py: {path} does not exist") from None
    except Exception as e:  # torch.load raises anything (IndexError, UnpicklingError, ...) on a foreign file
        raise SystemExit(f"evaluate.py: cannot load {path} as .npy or a weights_only torch file: {e}") from None
    if torch.is_tensor(x):
        x = x.float().numpy() if x.dtype in (torch.float16, torch.bfloat16) else x.numpy()
    if not isinstance(x, np.ndarray):
        raise SystemExit(
            f"evaluate.py: {path} holds a {type(x).__name__}; save a single tensor or array of shape (N, C) instead"
        )
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise SystemExit(
            f"evaluate.py: {path} must be a finite float array of shape (N, C), got dtype {x.dtype} shape {x.shape}"
        )
    return x


def compute(args):
    """Dict of every metric computable from the given files."""
    a = {k: load_matrix(v) for k, v in vars(args).items() if k in INPUTS and v is not None}
    out = {}
    if "gen_feats" in a and "real_feats" in a:
        out["fid"] = metrics.fid(a["gen_feats"], a["real_feats"])
        if args.ndb_k > 0:
            out["ndb_over_k"] = metrics.ndb(a["real_feats"], a["gen_feats"], k=args.ndb_k)
    if "gen_logits" in a:
        gen_logits = torch.from_numpy(a["gen_logits"]).double()
        out["inception_score"] = metrics.inception_score(gen_logits.log_softmax(1))
        out["modified_inception_score"] = metrics.modified_inception_score(gen_logits.softmax(1))
        if "train_logits" in a:
            train_probs = torch.from_numpy(a["train_logits"]).double().softmax(1)
            out["am_score"] = metrics.am_score(train_probs, gen_logits.softmax(1))
        if "latents" in a:
            out["linear_separability"] = metrics.linear_separability(
                a["gen_logits"], a["latents"], svm_random_state=args.svm_random_state, trim=args.ls_trim
            )
    return out


# ---------------------------------------------------------------- audio mode


def audio_files(wav_dir):
    """Every .wav/.flac below wav_dir, sorted; AudioError if there is none."""
    wav_dir = Path(wav_dir)
    if not wav_dir.is_dir():
        raise AudioError(f"--wav_dir {wav_dir} is not a folder")
    files = sorted(p for p in wav_dir.rglob("*") if p.suffix.lower() in (".wav", ".flac") and p.is_file())
    if not files:
        raise AudioError(f"--wav_dir {wav_dir}: no .wav or .flac files found (searched recursively)")
    return files


def open_source(args, device):
    """What is evaluated, checked or loaded before the slow reference scoring: the --wav_dir files (a list of
    paths) or the generator (an ASGANInference model) of --pretrained or --checkpoint."""
    if args.wav_dir:
        files = audio_files(args.wav_dir)
        check_audio_files(files, resample=args.resample)
        return files
    if args.pretrained:
        from density.inference.hub import asgan_hubert_sc09_6

        return asgan_hubert_sc09_6(pretrained=True, device=device)
    model = load_asgan(args.checkpoint, args.vocoder, device)
    if isinstance(model.vocoder, GriffinLimVocoder):  # a mel checkpoint scored without --vocoder
        model.vocoder.n_iter = args.griffin_lim_iters
    return model


def fixed_clips(scores, args):
    """make_scores(k) of a fixed set of clips: the Scores themselves, or with --repeats K > 1 a bootstrap
    resample (seed --seed + k) per repeat."""
    return lambda k: scores if args.repeats == 1 else scoring.bootstrap(scores, args.seed + k)


def generated_clips(model, classifier, args):
    """make_scores(k): --n clips of the model with latent seed --seed + k; the first draw also goes to --save_wavs."""
    return lambda k: scoring.generate_scores(
        model, classifier, args.n, args.seed + k, args.batch_size, args.save_wavs if k == 0 else None
    )


def noise_clips(classifier, args):
    """make_scores(k): --n white-noise clips with seed --seed + k."""
    return lambda k: scoring.noise_scores(classifier, args.n, args.seed + k, args.batch_size)


def source_row(args, source, classifier, make_row):
    """The row of what is evaluated (source from open_source)."""
    if args.wav_dir:
        batches = scoring.load_batches(source, args.batch_size, args.resample, args.num_workers)
        return make_row(str(args.wav_dir), fixed_clips(scoring.score_wavs(classifier, batches, desc="wav_dir"), args))
    name = "official ASGAN" if args.pretrained else Path(args.checkpoint).name
    return make_row(name, generated_clips(source, classifier, args))


def run_audio(args):
    """Audio mode -> (rows, info): the evaluated set's row first, then the reference rows (real train, real test,
    Griffin-Lim of real test, white noise); info names the classifier, its classes, the seed and the repeats."""
    device = resolve_device(args.device)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    classifier = load_classifier(args.classifier, device)
    classifier_hash = file_sha256(args.classifier)
    source = open_source(args, device)
    real_set = partial(
        scoring.cached_scores,
        classifier,
        classifier_hash,
        cache_dir=None if args.no_cache else args.cache_dir,
        batch_size=args.batch_size,
        resample=args.resample,
        num_workers=args.num_workers,
        griffin_lim_iters=args.griffin_lim_iters,
    )
    train = real_set(args.train_csv, "real")
    make_row = partial(
        scoring.repeated_row,
        reference=scoring.make_reference(train, args.ndb_k),
        repeats=args.repeats,
        ls_trim=args.ls_trim,
        svm_random_state=args.svm_random_state,
    )
    rows = [source_row(args, source, classifier, make_row), make_row("real train", fixed_clips(train, args))]
    if args.test_csv:
        for kind, name in (("real", "real test"), ("griffin_lim", "Griffin-Lim of real test")):
            rows.append(make_row(name, fixed_clips(real_set(args.test_csv, kind), args)))
    rows.append(make_row("white noise", noise_clips(classifier, args)))
    info = dict(
        classifier=str(args.classifier),
        classifier_sha256=classifier_hash,
        classes=list(classifier.classes),
        seed=args.seed,
        repeats=args.repeats,
    )
    return rows, info


def write_json(path, result):
    """Atomic write; non-finite values become null."""
    clean = {k: (v if math.isfinite(v) else None) for k, v in result.items()}
    write_text(path, json.dumps(clean, indent=2))


def _finite_or_none(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def add_source_arguments(p):
    """--checkpoint / --pretrained / --wav_dir and what they are scored against."""
    a = p.add_argument_group("audio mode (one of --checkpoint, --pretrained, --wav_dir)")
    src = a.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="an ASGAN checkpoint (.pt with cfg_yaml + g_ema_state_dict)")
    src.add_argument("--pretrained", action="store_true", help="the official HuBERT SC09 ASGAN (downloads)")
    src.add_argument("--wav_dir", help="a folder of generated (or any) 16 kHz clips, searched recursively")
    a.add_argument(
        "--vocoder",
        help="vocoder for --checkpoint (default: official HuBERT HiFi-GAN for hubert_L6, Griffin-Lim for melspec)",
    )
    a.add_argument(
        "--griffin_lim_iters",
        type=int,
        default=GRIFFIN_LIM_SCORING_ITERS,
        help=f"Griffin-Lim iterations for the Griffin-Lim row and for mel checkpoints scored without "
        f"--vocoder (default {GRIFFIN_LIM_SCORING_ITERS}; generate.py listens with {GRIFFIN_LIM_LISTENING_ITERS})",
    )
    a.add_argument(
        "--classifier", help="classifier file: train_classifier.py's classifier_best.pt or the published resnext.pth"
    )
    a.add_argument("--train_csv", help="split_data.py CSV of the real training clips (FID/NDB/AM reference)")
    a.add_argument(
        "--test_csv", help="split_data.py CSV of the real test clips (adds the real test and Griffin-Lim rows)"
    )
    return a


def add_run_arguments(a):
    """Audio mode's sizes, seeds, device, output and cache."""
    a.add_argument("--n", type=int, default=2048, help="generated and noise clips (default 2048)")
    a.add_argument("--batch_size", type=int, default=64)
    a.add_argument("--seed", type=int, default=0, help="seed of the latent and noise draws (default 0)")
    a.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="K > 1: every row K times (generator and noise rows with seeds seed .. seed+K-1, fixed clip "
        "sets as bootstrap resamples), reported as mean ± std (default 1)",
    )
    a.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    a.add_argument("--resample", action="store_true", help="resample clips that are not at 16 kHz")
    a.add_argument("--save_wavs", help="also write the generated clips to this folder")
    add_overwrite_flag(a, "wavs already in --save_wavs", "any scoring")
    a.add_argument(
        "--cache_dir",
        default=str(scoring.DEFAULT_CACHE),
        help="cache of real-set classifier outputs (default $XDG_CACHE_HOME or ~/.cache, /asgan/eval)",
    )
    a.add_argument("--no_cache", action="store_true", help="neither read nor write the cache")
    a.add_argument("--num_workers", type=int, default=0, help="DataLoader workers reading wavs")
    a.add_argument(
        "--num_threads",
        type=int,
        default=0,
        help="torch CPU threads (default 0: torch's choice; 1 is fastest on a small, shared CPU)",
    )


def add_array_arguments(p):
    """Array mode's inputs (INPUTS) and the options of both modes."""
    r = p.add_argument_group("array mode")
    r.add_argument("--gen_feats", help="classifier features of generated clips, (N, C)")
    r.add_argument("--real_feats", help="classifier features of real (training) clips, (M, C)")
    r.add_argument("--gen_logits", help="classifier logits of generated clips, (N, K); softmax is applied")
    r.add_argument("--train_logits", help="classifier logits of training clips, (M, K), for the AM score")
    r.add_argument("--latents", help="latents of the generated clips, (N, d), for linear separability")
    p.add_argument("--ndb_k", type=int, default=50, help="K-means clusters for NDB (default 50; 0 skips NDB)")
    p.add_argument(
        "--ls_trim",
        type=float,
        default=0.5,
        help="fraction of most confident clips kept for linear separability (default 0.5)",
    )
    p.add_argument("--svm_random_state", type=int, default=0, help="SVC random_state (default 0)")
    p.add_argument("--json", help="also write the results to this JSON file")


def check_args(p, args):
    """Usage errors (p.error: exit 2) -> whether this is audio mode."""
    audio = args.checkpoint or args.pretrained or args.wav_dir
    if audio:
        if any(getattr(args, k) for k in INPUTS):
            p.error("give either an audio source (--checkpoint/--pretrained/--wav_dir) or arrays, not both")
        if not args.classifier or not args.train_csv:
            p.error(
                "audio mode needs --classifier (train one with train_classifier.py, or the published "
                "resnext.pth) and --train_csv (the real training clips, from split_data.py)"
            )
        if args.n < 2 or args.batch_size < 1 or args.ndb_k < 0 or args.griffin_lim_iters < 0 or args.repeats < 1:
            p.error("--n must be >= 2, --batch_size >= 1, --ndb_k >= 0, --griffin_lim_iters >= 0, --repeats >= 1")
        if args.vocoder and not args.checkpoint:
            p.error("--vocoder goes with --checkpoint")
        check_outputs(p, args)
    elif not ((args.gen_feats and args.real_feats) or args.gen_logits):
        p.error(
            "nothing to compute: give --checkpoint, --pretrained or --wav_dir (audio mode), or arrays: "
            "FID/NDB needs --gen_feats and --real_feats, the other metrics need --gen_logits"
        )
    if args.json:
        try:
            writable_file(args.json, "--json")
        except OutputError as e:
            p.error(str(e))
    return bool(audio)


def check_outputs(p, args):
    """The files --save_wavs will hold (a generator's first --n clips): none may exist without --overwrite."""
    if not args.save_wavs or args.wav_dir:
        return
    if Path(args.save_wavs).exists() and not Path(args.save_wavs).is_dir():
        p.error(f"--save_wavs {args.save_wavs} is a file; give a folder (it is created if missing)")
    clips = [(f"clip {i}", scoring.saved_wav_name(i)) for i in range(args.n)]
    try:
        plan_outputs(args.save_wavs, clips, overwrite=args.overwrite)
    except OutputError as e:
        p.error(str(e))


def parse_args(argv=None):
    """-> (args, whether this is audio mode)."""
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    audio = add_source_arguments(p)
    add_run_arguments(audio)
    add_array_arguments(p)
    args = p.parse_args(argv)
    return args, check_args(p, args)


def main(argv=None):
    args, audio = parse_args(argv)
    if not audio:
        try:
            result = compute(args)
        except ValueError as e:
            raise SystemExit(f"evaluate.py: {e}") from None
        for name, value in result.items():
            print(f"{name}: {value:.6g}")
        if args.json:
            write_json(args.json, result)
        return result
    try:
        rows, info = run_audio(args)
    except (AudioError, ClassifierError, DownloadError, ValueError, OSError) as e:
        raise SystemExit(f"evaluate.py: {e}") from None
    print(scoring.markdown_table(rows))
    if args.json:
        rows = [{k: _finite_or_none(v) for k, v in r.items()} for r in rows]
        write_text(args.json, json.dumps(dict(info, rows=rows), indent=2))
    return rows


if __name__ == "__main__":
    cli.command(main)
