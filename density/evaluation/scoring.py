"""The classifier metrics as a library (paper §4, SaShiMi protocol): what evaluate.py, diagnose.py and the demo use.

Clips are scored by the evaluation classifier (density.evaluation.classifier) into Scores (features (N, C) and
logits (N, K)); a Reference holds the training set's Scores and NDB's K-means; row_metrics turns Scores into one
table row (FID, IS, mIS, AM, NDB/K, linear separability), repeated_row averages rows over seeds or bootstrap
resamples and markdown_table prints them.

    classifier = load_classifier(path)  # density.evaluation.classifier
    train = cached_scores(classifier, file_sha256(path), "splits/sc09-train.csv", "real", DEFAULT_CACHE)
    row = evaluate_generator(load_asgan(checkpoint), classifier, make_reference(train), n=2048)
    print(markdown_table([row]))

Real-set scores (cached_scores) are cached under a key of the classifier file's SHA-256, the CSV's contents and
the kind of clips (real, or their Griffin-Lim resynthesis with GRIFFIN_LIM_SCORING_ITERS iterations). A cache
entry that cannot be read back (empty, truncated, foreign) is scored again and rewritten.
"""

import hashlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from density import metrics
from density.audio.signal import CLIP_SAMPLES, check_audio_files, fit_length, log_mel, save_wav
from density.data.splits import read_split_csv
from density.evaluation.classifier import ClipDataset
from density.runtime.fileio import atomic_path
from density.vocoders.vocoder import GRIFFIN_LIM_SCORING_ITERS, GriffinLimVocoder

CACHE_VERSION = "1"  # bump when scoring changes, so stale cached real-set scores are not reused
# where evaluate.py caches real-set scores (--cache_dir)
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asgan" / "eval"
NOISE_CLIP_STD = 0.1  # white-noise reference clips (the front end is level-independent: dB relative to each clip's max)
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


def griffin_lim_batches(batches, n_iter=GRIFFIN_LIM_SCORING_ITERS):
    """Real clips -> their Griffin-Lim resynthesis from the log-mel front end (density.audio.signal.log_mel)."""
    vocoder = GriffinLimVocoder(n_iter=n_iter)
    for wav in batches:
        with torch.no_grad():
            yield fit_length(vocoder(log_mel(wav).transpose(1, 2)).squeeze(1), wav.shape[-1])


def read_cache(cache, n):
    """Scores of n clips from a cache file -> Scores, or None (and a note on stderr) when the file is unreadable or
    not n clips' scores: a damaged entry is recomputed, never fatal."""
    try:
        with np.load(cache, allow_pickle=False) as f:
            scores = Scores(f["feats"], f["logits"])
    except Exception as e:  # np.load raises anything (EOFError, BadZipFile, ValueError, KeyError) on a damaged file
        problem = f"{type(e).__name__}: {e}"
    else:
        shapes = scores.feats.shape, scores.logits.shape
        if all(len(shape) == 2 and shape[0] == n for shape in shapes):
            return scores
        problem = f"arrays of shapes {shapes[0]} and {shapes[1]} for {n} clips"
    tqdm.write(f"{cache}: unreadable cache entry ({problem}); scoring the clips again", file=sys.stderr)
    return None


def cached_scores(
    classifier,
    classifier_hash,
    csv_path,
    kind,
    cache_dir,
    batch_size=64,
    resample=False,
    num_workers=0,
    griffin_lim_iters=GRIFFIN_LIM_SCORING_ITERS,
):
    """Scores of every clip of a split CSV (kind 'real') or of their Griffin-Lim resynthesis (kind 'griffin_lim'),
    read from / written to cache_dir (None: no cache) under a hash of the classifier file, the CSV and kind."""
    csv_path = Path(csv_path)
    paths, _ = read_split_csv(csv_path)
    kind_key = f"{kind}{griffin_lim_iters}" if kind == "griffin_lim" else kind
    key = hashlib.sha256(f"{CACHE_VERSION}\n{classifier_hash}\n{kind_key}\n".encode() + csv_path.read_bytes())
    cache = Path(cache_dir) / f"{csv_path.stem}-{kind}-{key.hexdigest()[:20]}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        scores = read_cache(cache, len(paths))
        if scores is not None:
            return scores
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


def saved_wav_name(i):
    """The file name of generated clip i in a save_wavs folder: 00000.wav, 00001.wav, ..."""
    return f"{i:05d}.wav"


def generate_scores(model, classifier, n=2048, seed=0, batch_size=64, save_wavs=None):
    """n clips of an ASGANInference model (z = rows of a seeded (n, z_dim) CPU draw) -> Scores with latents z.
    save_wavs: a folder that receives them (saved_wav_name); evaluate.py checks it first (no silent overwrite)."""
    z = torch.randn(n, model.z_dim, generator=torch.Generator().manual_seed(seed))
    feats, logits = [], []
    for start in tqdm(range(0, n, batch_size), desc="generating and scoring", unit="batch", leave=False):
        wav = model.generate_from_latent(z[start : start + batch_size])  # (B, 16000)
        if save_wavs is not None:
            for k, w in enumerate(wav.cpu()):
                save_wav(Path(save_wavs) / saved_wav_name(start + k), w)
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
    """n white-noise clips (std NOISE_CLIP_STD, seeded) -> Scores."""
    noise = NOISE_CLIP_STD * torch.randn(n, CLIP_SAMPLES, generator=torch.Generator().manual_seed(seed))
    return score_wavs(classifier, noise, batch_size, desc="noise")


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
