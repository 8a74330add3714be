"""ASGAN's evaluation (paper §4, SaShiMi protocol): FID, IS, mIS, AM, NDB/K and linear separability.

Audio mode scores clips with the evaluation classifier (density/classifier.py) and prints a Markdown table with
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
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from density import metrics
from density.audio.signal import AudioError, check_audio_files, fit_length, log_mel, save_wav
from density.data.splits import read_split_csv
from density.evaluation.classifier import ClassifierError, ClipDataset, file_sha256, load_classifier
from density.inference.asgan import load_asgan
from density.runtime import cli
from density.runtime.download import DownloadError
from density.runtime.engine import resolve_device
from density.runtime.fileio import atomic_path, write_text
from density.vocoders.vocoder import GriffinLimVocoder

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

CACHE_VERSION = "1"  # bump when scoring changes, so stale cached real-set scores are not reused
# Griffin-Lim iterations when scoring log-mels (the Griffin-Lim row; mel checkpoints without --vocoder). The
# classifier reads a coarse 32-band mel, nearly blind to phase: on 512 demo test clips 8 iterations gave FID and
# IS within 0.3 % of 32 iterations (generate.py's listening default) at a quarter of the time.
GRIFFIN_LIM_ITERS = 8
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asgan" / "eval"
NOISE_STD = 0.1  # white-noise reference clips (the front end is level-independent: dB relative to each clip's max)
COLUMNS = (
    ("N", "n", "d"),
    ("FID ↓", "fid", ".3f"),
    ("IS ↑", "inception_score", ".3f"),
    ("mIS ↑", "modified_inception_score", ".2f"),
    ("AM ↓", "am_score", ".3f"),
    ("NDB/K ↓", "ndb_over_k", ".3f"),
    ("LS ↓", "linear_separability", ".3f"),
)


@dataclass
class Scores:
    """Classifier outputs for N clips: features (N, C) and logits (N, K) float64; latents (N, d) for a generator."""

    feats: np.ndarray
    logits: np.ndarray
    latents: np.ndarray | None = None


@dataclass
class Reference:
    """The training set's scores and the NDB K-means fitted on its features (None when ndb_k is 0)."""

    train: Scores
    kmeans: object = None


def _scores(feats, logits, latents=None):
    return Scores(torch.cat(feats).double().numpy(), torch.cat(logits).double().numpy(), latents)


def score_wavs(classifier, wavs, batch_size=64, desc="scoring"):
    """Waveforms at 16 kHz, a (N, T) tensor or an iterable of (B, T) batches -> Scores (no latents)."""
    batches = wavs.split(batch_size) if torch.is_tensor(wavs) else wavs
    feats, logits = [], []
    for wav in tqdm(batches, desc=desc, unit="batch", leave=False):
        lg, ft = classifier.classify(wav)
        logits.append(lg.cpu()), feats.append(ft.cpu())
    return _scores(feats, logits)


def load_batches(paths, batch_size=64, resample=False, num_workers=0):
    """Audio files -> iterator of (B, 16000) waveform batches in file order (cut or end-padded to 1 s)."""
    loader = DataLoader(ClipDataset(paths, resample=resample), batch_size=batch_size, num_workers=num_workers)
    return (wav for wav, _ in loader)


def griffin_lim_batches(batches, n_iter=GRIFFIN_LIM_ITERS):
    """Real clips -> their Griffin-Lim resynthesis from the log-mel front end (density.audio.signal.log_mel)."""
    vocoder = GriffinLimVocoder(n_iter=n_iter)
    for wav in batches:
        with torch.no_grad():
            yield fit_length(vocoder(log_mel(wav).transpose(1, 2)).squeeze(1), wav.shape[-1])


def cached_scores(
    classifier,
    classifier_hash,
    csv_path,
    kind,
    cache_dir,
    batch_size=64,
    resample=False,
    num_workers=0,
    griffin_lim_iters=GRIFFIN_LIM_ITERS,
):
    """Scores of every clip of a split CSV (kind 'real') or of their Griffin-Lim resynthesis (kind 'griffin_lim'),
    read from / written to cache_dir (None: no cache) under a hash of the classifier file, the CSV and kind."""
    csv_path = Path(csv_path)
    paths, _ = read_split_csv(csv_path)
    kind_key = f"{kind}{griffin_lim_iters}" if kind == "griffin_lim" else kind
    key = hashlib.sha256(f"{CACHE_VERSION}\n{classifier_hash}\n{kind_key}\n".encode() + csv_path.read_bytes())
    cache = Path(cache_dir) / f"{csv_path.stem}-{kind}-{key.hexdigest()[:20]}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            return Scores(f["feats"], f["logits"])
    check_audio_files(paths, resample=resample)
    batches = load_batches(paths, batch_size, resample, num_workers)
    if kind == "griffin_lim":
        batches = griffin_lim_batches(batches, griffin_lim_iters)
    scores = score_wavs(classifier, batches, desc=f"{csv_path.name} ({kind})")
    if cache is not None:
        with atomic_path(cache, suffix=".npz") as tmp:
            np.savez(tmp, feats=scores.feats, logits=scores.logits)
    return scores


def make_reference(train, ndb_k=50):
    """Training-set Scores -> Reference (fits NDB's K-means once, on the training features)."""
    if not ndb_k:
        return Reference(train)
    if len(train.feats) < ndb_k:
        raise ValueError(f"NDB needs at least --ndb_k={ndb_k} training clips, got {len(train.feats)}; lower --ndb_k")
    from sklearn.cluster import KMeans  # imported here: only evaluation needs scikit-learn

    km = KMeans(n_clusters=ndb_k, random_state=metrics.NDB_SEED, n_init=metrics.NDB_N_INIT).fit(train.feats)
    return Reference(train, km)


def row_metrics(name, scores, reference, ls_trim=0.5, svm_random_state=0):
    """One table row: name, n and every metric of `scores` against the training set (linear separability only
    with latents; None where a metric is undefined)."""
    log_p = torch.from_numpy(scores.logits).log_softmax(1)
    train_p = torch.from_numpy(reference.train.logits).softmax(1)
    fid = metrics.fid(scores.feats, reference.train.feats)
    row = dict(
        name=name,
        n=len(scores.logits),
        fid=0.0 if fid < 0 else fid,  # FID >= 0; a set against itself can come out at -1e-12
        inception_score=metrics.inception_score(log_p),
        modified_inception_score=metrics.modified_inception_score(log_p.exp()),
        am_score=metrics.am_score(train_p, log_p.exp()),
        ndb_over_k=(
            metrics.ndb(reference.train.feats, scores.feats, kmeans=reference.kmeans)
            if reference.kmeans is not None
            else None
        ),
        linear_separability=None,
    )
    if scores.latents is not None:
        try:
            row["linear_separability"] = metrics.linear_separability(
                scores.logits, scores.latents, svm_random_state=svm_random_state, trim=ls_trim
            )
        except ValueError as e:  # e.g. every kept clip has one class: separability is undefined
            tqdm.write(f"{name}: no linear separability ({e})")
    return row


def generate_scores(model, classifier, n=2048, seed=0, batch_size=64, save_wavs=None):
    """n clips of an ASGANInference model (z = rows of a seeded (n, z_dim) CPU draw) -> Scores with latents z.
    save_wavs: a folder that receives them as 00000.wav, 00001.wav, ..."""
    z = torch.randn(n, model.z_dim, generator=torch.Generator().manual_seed(seed))
    feats, logits = [], []
    for start in tqdm(range(0, n, batch_size), desc="generating and scoring", unit="batch", leave=False):
        wav = model.generate_from_latent(z[start : start + batch_size])  # (B, 16000)
        if save_wavs is not None:
            for k, w in enumerate(wav.cpu()):
                save_wav(Path(save_wavs) / f"{start + k:05d}.wav", w)
        lg, ft = classifier.classify(wav)
        logits.append(lg.cpu()), feats.append(ft.cpu())
    return _scores(feats, logits, z.double().numpy())


def evaluate_generator(
    model,
    classifier,
    reference,
    name="generated",
    n=2048,
    seed=0,
    batch_size=64,
    save_wavs=None,
    ls_trim=0.5,
    svm_random_state=0,
):
    """Table row (see row_metrics) of n clips from an ASGANInference model, e.g. `density.inference.load_asgan(
    checkpoint)`, against a Reference."""
    scores = generate_scores(model, classifier, n, seed, batch_size, save_wavs)
    return row_metrics(name, scores, reference, ls_trim, svm_random_state)


def bootstrap(scores, seed):
    """A resample with replacement of the clips of `scores` (same N), drawn with numpy's default_rng(seed)."""
    idx = np.random.default_rng(seed).integers(0, len(scores.logits), len(scores.logits))
    return Scores(scores.feats[idx], scores.logits[idx], None if scores.latents is None else scores.latents[idx])


def repeated_row(name, make_scores, reference, repeats=1, ls_trim=0.5, svm_random_state=0):
    """The row (row_metrics) of make_scores(k) for k = 0 .. repeats - 1; with repeats > 1 each metric is the mean
    over the repeats, `<metric>_std` their standard deviation (ddof 1) and `repeats` their number."""
    rows = [row_metrics(name, make_scores(k), reference, ls_trim, svm_random_state) for k in range(repeats)]
    if repeats == 1:
        return rows[0]
    out = dict(rows[0], repeats=repeats)
    for _, key, _ in COLUMNS[1:]:
        values = [r[key] for r in rows if r[key] is not None and math.isfinite(r[key])]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return out


def noise_scores(classifier, n=2048, seed=0, batch_size=64):
    """n white-noise clips (std NOISE_STD, seeded) -> Scores."""
    noise = NOISE_STD * torch.randn(n, 16000, generator=torch.Generator().manual_seed(seed))
    return score_wavs(classifier, noise, batch_size, desc="noise")


def audio_files(wav_dir):
    """Every .wav/.flac below wav_dir, sorted; AudioError if there is none."""
    wav_dir = Path(wav_dir)
    if not wav_dir.is_dir():
        raise AudioError(f"--wav_dir {wav_dir} is not a folder")
    files = sorted(p for p in wav_dir.rglob("*") if p.suffix.lower() in (".wav", ".flac") and p.is_file())
    if not files:
        raise AudioError(f"--wav_dir {wav_dir}: no .wav or .flac files found (searched recursively)")
    return files


def markdown_table(rows):
    """Rows (dicts from row_metrics) -> Markdown table; '–' where a metric is not defined."""
    lines = ["| set | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        cells = [_cell(r, key, fmt) for _, key, fmt in COLUMNS]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(row, key, fmt):
    """A metric as `mean ± std` where the row has `<key>_std`, else its value; '–' where it is not defined."""
    value, std = row.get(key), row.get(f"{key}_std")
    if value is None or not math.isfinite(value):
        return "–"
    return format(value, fmt) + (f" ± {std:{fmt}}" if std is not None and math.isfinite(std) else "")


def run_audio(args):
    """Audio mode: -> list of rows (the evaluated set first, then the reference rows)."""
    device = resolve_device(args.device)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    classifier = load_classifier(args.classifier, device)
    classifier_hash = file_sha256(args.classifier)
    cache = None if args.no_cache else args.cache_dir
    common = dict(batch_size=args.batch_size, resample=args.resample, num_workers=args.num_workers)
    target = None
    if args.wav_dir:
        files = audio_files(args.wav_dir)  # checked before the slow reference scoring
        check_audio_files(files, resample=args.resample)
    elif args.pretrained:
        from density.inference.hub import asgan_hubert_sc09_6

        model = asgan_hubert_sc09_6(pretrained=True, device=device)
    else:
        model = load_asgan(args.checkpoint, args.vocoder, device)
        if isinstance(model.vocoder, GriffinLimVocoder):  # a mel checkpoint scored without --vocoder
            model.vocoder.n_iter = args.griffin_lim_iters
    train = cached_scores(classifier, classifier_hash, args.train_csv, "real", cache, **common)
    reference = make_reference(train, args.ndb_k)
    repeat = dict(
        reference=reference, repeats=args.repeats, ls_trim=args.ls_trim, svm_random_state=args.svm_random_state
    )

    def fixed(scores):  # a fixed set of clips: itself, or with --repeats a bootstrap resample per repeat
        return lambda k: scores if args.repeats == 1 else bootstrap(scores, args.seed + k)

    if args.wav_dir:
        target = repeated_row(
            f"{args.wav_dir}", fixed(score_wavs(classifier, load_batches(files, **common), desc="wav_dir")), **repeat
        )
    else:
        name = "official ASGAN" if args.pretrained else f"{Path(args.checkpoint).name}"
        target = repeated_row(
            name,
            lambda k: generate_scores(
                model, classifier, args.n, args.seed + k, args.batch_size, args.save_wavs if k == 0 else None
            ),
            **repeat,
        )
    rows = [target, repeated_row("real train", fixed(train), **repeat)]
    if args.test_csv:
        for kind, name in (("real", "real test"), ("griffin_lim", "Griffin-Lim of real test")):
            scores = cached_scores(
                classifier,
                classifier_hash,
                args.test_csv,
                kind,
                cache,
                griffin_lim_iters=args.griffin_lim_iters,
                **common,
            )
            rows.append(repeated_row(name, fixed(scores), **repeat))
    rows.append(
        repeated_row(
            "white noise", lambda k: noise_scores(classifier, args.n, args.seed + k, args.batch_size), **repeat
        )
    )
    return rows, dict(
        classifier=str(args.classifier),
        classifier_sha256=classifier_hash,
        classes=list(classifier.classes),
        seed=args.seed,
        repeats=args.repeats,
    )


def write_json(path, result):
    """Atomic write; non-finite values become null."""
    clean = {k: (v if math.isfinite(v) else None) for k, v in result.items()}
    write_text(path, json.dumps(clean, indent=2))


def _finite_or_none(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        default=GRIFFIN_LIM_ITERS,
        help=f"Griffin-Lim iterations for the Griffin-Lim row and for mel checkpoints scored without "
        f"--vocoder (default {GRIFFIN_LIM_ITERS}; generate.py listens with 32)",
    )
    a.add_argument(
        "--classifier", help="classifier file: train_classifier.py's classifier_best.pt or the published resnext.pth"
    )
    a.add_argument("--train_csv", help="split_data.py CSV of the real training clips (FID/NDB/AM reference)")
    a.add_argument(
        "--test_csv", help="split_data.py CSV of the real test clips (adds the real test and Griffin-Lim rows)"
    )
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
    a.add_argument(
        "--cache_dir",
        default=str(DEFAULT_CACHE),
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
    args = p.parse_args(argv)
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
    elif not ((args.gen_feats and args.real_feats) or args.gen_logits):
        p.error(
            "nothing to compute: give --checkpoint, --pretrained or --wav_dir (audio mode), or arrays: "
            "FID/NDB needs --gen_feats and --real_feats, the other metrics need --gen_logits"
        )
    return args, bool(audio)


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
    print(markdown_table(rows))
    if args.json:
        rows = [{k: _finite_or_none(v) for k, v in r.items()} for r in rows]
        write_text(args.json, json.dumps(dict(info, rows=rows), indent=2))
    return rows


if __name__ == "__main__":
    cli.command(main)
