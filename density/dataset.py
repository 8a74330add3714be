"""Training data (reference notes 23, 24, 27): feature/audio datasets, z sampling and the tile-padding collate.

Items are (x, z): x is a (frames, C) float32 feature matrix (HuBERT layer-6 .pt features, cached log-mels,
or the log-mel of an audio file computed on the fly) or, for data_type 'wav', a (T,) waveform; z is a
(frames, z_dim) matrix of i.i.d. MVN(z_mean*1, z_std*I) rows (one (z_dim,) vector for 'wav'), of which the
collate keeps row 0. z is drawn from torch's global RNG (as the reference does), so seeding torch (and, in
DataLoader workers, torch's per-worker seeding) makes items reproducible; the collate's random crop uses
python's `random`, also seeded per worker by the DataLoader.

Decisions on the reference's quirks (docs/reference.md, differences):
- z_std is used as a variance, as the reference does (reference note 23), so that the same seed gives the same z.
- Tiling at most once and only for items longer than seq_len/2, and crop starts in 0..l-seq_len-1 (never
  l-seq_len), are kept as in the reference (reference note 24): they define the training distribution.
- Log-mel items are padded with the reference's value, REFERENCE_MEL_PAD (-11.4), not LOG_MEL_SILENCE (-11.51).
- HuBERT padding uses zeros unless a silence-vector file is given (`sil_vec_path`); the reference looked for
  the unshipped 'density/runs/hubert_sil_vec.pt' and fell back to zeros.
- 'wav' items are scaled by 0.99/max|x| (the reference divided by max x, which flips or blows up clips whose
  positive peak is small or zero); the collate returns them as (B, seq_len, 1).
- A 1-frame item keeps a (1, z_dim) z (the reference's became a vector and broke the collate).
- preload stores every item as one compact fp16 tensor in a list (frames x C x 2 bytes each: SC09 HuBERT
  train, about 18.6k x 50 x 768 x 2 B = 1.4 GB; log-mels 100 x 128 x 2 B = 25.6 kB per clip) and returns float32.
"""

import glob
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf.errors import MissingMandatoryValue
from torch.distributions import MultivariateNormal
from torch.utils.data import Dataset
from tqdm import tqdm

from density.audio.signal import REFERENCE_MEL_PAD, load_audio, log_mel
from density.data.splits import SplitError, read_csv

DATA_TYPES = ("hubert_L6", "melspec", "wav")
FEATURE_EXT = ".pt"
AUDIO_EXTS = (".wav", ".mp3", ".flac")  # collected together when train_root holds no .pt files
WAV_PEAK = 0.99  # waveform items are scaled to this peak
PRELOAD_THREADS = 8  # as the reference
NORM_STD_FLOOR = 0.1  # per-channel std floor of FeatureNorm: log-mel bins that are almost always silent
WORKER_KILL_S = 10  # stop_workers: wait this long for a SIGKILLed worker to be reaped


class DatasetError(ValueError):
    """Training data that cannot be used; the message names the file or config key and what to do."""


def _get(cfg, key):
    """cfg.key for a DictConfig or any attribute object; a missing mandatory value is a DatasetError."""
    try:
        return getattr(cfg, key)
    except MissingMandatoryValue:
        raise DatasetError(f"config key '{key}' must be set (e.g. {key}=...) for this data setup") from None


def load_feature_file(path):
    """A saved (frames, C) or (T,) tensor, loaded without unpickling code -> float32 tensor; a DatasetError names
    the file when it cannot be read or holds NaN/inf."""
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DatasetError(
            f"{path}: cannot load feature file ({type(e).__name__}: {e}); delete it and re-run the feature extraction"
        ) from e
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise DatasetError(
            f"{path}: expected a float tensor, found {type(x).__name__}; "
            "is this a feature file written by hubert_feature_reader.py?"
        )
    if not x.isfinite().all():
        raise DatasetError(f"{path}: holds NaN or infinite values; delete it and re-run the feature extraction")
    return x.float()


class DiagonalNormal:
    """MultivariateNormal(loc, covariance) for a diagonal covariance, drawing the same numbers 100x faster.

    The reference draws each item's z with torch's MultivariateNormal, whose sample() multiplies the standard
    normal draw by the Cholesky factor: a (frames, z_dim, z_dim) matmul per item, most of a CPU step's data
    time. With a diagonal factor that product is exactly scale * eps (the off-diagonal terms add exact zeros), so
    loc + scale * eps with the same eps draw gives bit-identical z and leaves the random stream where it was.
    """

    def __init__(self, loc, covariance):
        tril = MultivariateNormal(loc, covariance).scale_tril
        if not torch.equal(tril, torch.diag_embed(tril.diagonal())):
            raise ValueError("DiagonalNormal needs a diagonal covariance")
        self.loc, self.scale = loc, tril.diagonal().clone()

    def sample(self, sample_shape=()):
        eps = torch.empty(*sample_shape, *self.loc.shape, dtype=self.loc.dtype).normal_()  # as torch's draw
        return self.loc + self.scale * eps


class FeatureDataset(Dataset):
    """Items (x, z) of a list of .pt feature files or audio files (see module doc)."""

    def __init__(self, files, data_type="hubert_L6", z_dim=512, z_mean=0.0, z_std=1.0, c_dim=None, preload=False):
        if data_type not in DATA_TYPES:
            raise DatasetError(f"data_type must be one of {DATA_TYPES}, got '{data_type}'")
        if not z_std > 0:
            raise DatasetError(f"z_std must be > 0 (it is the variance of each z entry), got {z_std}")
        self.files = [str(f) for f in files]
        audio = [f for f in self.files if not f.endswith((FEATURE_EXT, ".pth"))]
        if audio and data_type == "hubert_L6":  # found here, not in a DataLoader worker at the first batch
            raise DatasetError(
                f"{audio[0]}: data_type hubert_L6 needs .pt feature files, not audio; extract features "
                "with hubert_feature_reader.py or set data_type=melspec/wav"
            )
        self.data_type, self.c_dim = data_type, c_dim
        # z_std is the covariance diagonal, i.e. a variance (reference note 23), kept for parity
        self.z_dist = DiagonalNormal(torch.full((z_dim,), float(z_mean)), float(z_std) * torch.eye(z_dim))
        self.cache = self._preload() if preload else None

    def __len__(self):
        return len(self.files)

    def load(self, i):
        """Features of item i: (frames, C) float32, or (T,) for 'wav'."""
        path = self.files[i]
        if path.endswith((FEATURE_EXT, ".pth")):
            x = load_feature_file(path)
        elif self.data_type == "melspec":
            x = log_mel(load_audio(path)).T  # (frames, 128)
        else:  # 'wav' (audio files for hubert_L6 are refused in __init__)
            x = load_audio(path)
            x = WAV_PEAK * x / x.abs().max().clamp_min(torch.finfo(x.dtype).tiny)
        want_dim = 1 if self.data_type == "wav" else 2
        if x.dim() != want_dim or x.shape[0] == 0:
            raise DatasetError(
                f"{path}: expected a non-empty {'(T,)' if want_dim == 1 else '(frames, C)'} tensor "
                f"for data_type {self.data_type}, got shape {tuple(x.shape)}"
            )
        if want_dim == 2 and self.c_dim is not None and x.shape[1] != self.c_dim:
            raise DatasetError(
                f"{path}: features have {x.shape[1]} channels but c_dim={self.c_dim}; "
                "set c_dim (and rp_w_cfg.c_dim) to match or point train_root at the right cache"
            )
        return x

    def _load_fp16(self, i):
        return self.load(i).to(torch.float16, memory_format=torch.contiguous_format, copy=True)

    def _preload(self):
        with ThreadPoolExecutor(PRELOAD_THREADS) as pool:
            return list(
                tqdm(
                    pool.map(self._load_fp16, range(len(self))),
                    total=len(self),
                    desc="preloading features",
                    unit="file",
                )
            )

    def __getitem__(self, i):
        x = self.cache[i].float() if self.cache is not None else self.load(i)
        z = self.z_dist.sample() if self.data_type == "wav" else self.z_dist.sample((x.shape[0],))
        return x, z


class FeatureNorm(nn.Module):
    """Per-channel standardisation of features (B, L, C): normalize(x) = (x - mean) / std; denormalize undoes it.

    A project addition (`normalize_features=true`, the demo preset): log-mels span about -11.5..1 where HuBERT
    features are of order 1. mean and std are (C,) buffers over every frame of the training split; the identity
    (mean 0, std 1, scalars) when a run does not normalise. Checkpoints carry them under their own key,
    `feature_norm` ({'mean', 'std'}), outside the generator's state dict, so reference checkpoints load unchanged.
    """

    def __init__(self, mean=None, std=None):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(0.0 if mean is None else mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(1.0 if std is None else std, dtype=torch.float32))

    @property
    def enabled(self):
        return self.mean.ndim > 0

    @classmethod
    def fit(cls, dataset):
        """Mean and std (floored at NORM_STD_FLOOR) of all frames of a FeatureDataset, in float64."""
        total, total_sq, n = 0.0, 0.0, 0
        for i in tqdm(range(len(dataset)), desc="feature statistics", unit="file"):
            x = (dataset.cache[i] if dataset.cache is not None else dataset.load(i)).double()  # (frames, C)
            total, total_sq, n = total + x.sum(0), total_sq + x.square().sum(0), n + x.shape[0]
        mean = total / n
        std = (total_sq / n - mean.square()).clamp_min(0).sqrt().clamp_min(NORM_STD_FLOOR)
        return cls(mean.float(), std.float())

    @classmethod
    def from_checkpoint(cls, ckpt):
        """The `feature_norm` entry of a checkpoint dict, or the identity when it has none."""
        entry = ckpt.get("feature_norm")
        return cls(entry["mean"], entry["std"]) if entry else cls()

    def to_checkpoint(self):
        """{'mean', 'std'} CPU tensors for the checkpoint's `feature_norm` key, or None for the identity."""
        return {"mean": self.mean.cpu(), "std": self.std.cpu()} if self.enabled else None

    def normalize(self, x):
        return (x - self.mean) / self.std if self.enabled else x

    def denormalize(self, x):
        return x * self.std + self.mean if self.enabled else x


def load_silence_vector(path, c_dim):
    """A saved (c_dim,) padding vector (e.g. the mean HuBERT feature of silence) -> float32 (c_dim,)."""
    v = load_feature_file(path)
    if v.numel() != c_dim:
        raise DatasetError(f"{path}: silence vector has {v.numel()} values, expected c_dim={c_dim}")
    return v.reshape(c_dim)


class Collate:
    """[(x, z)] -> (feats (B, seq_len, C) float32, lengths (B,) int64, None, z (B, z_dim)) (reference note 24).

    An item of l frames: l <= seq_len is copied to the front and, only if seq_len - l < l, its first
    seq_len - l frames fill the rest (one tile); otherwise the tail keeps the silence vector. l > seq_len is
    cropped at start ~ U{0..l-seq_len-1} (python `random`; l-seq_len is never drawn, as in the reference).
    'wav' items are (T,) samples and come out as (B, seq_len, 1).
    """

    def __init__(self, seq_len, data_type="hubert_L6", c_dim=768, sil_vec=None):
        if data_type not in DATA_TYPES:
            raise DatasetError(f"data_type must be one of {DATA_TYPES}, got '{data_type}'")
        self.seq_len, self.data_type = int(seq_len), data_type
        self.c_dim = 1 if data_type == "wav" else int(c_dim)
        if sil_vec is not None:
            self.silence = torch.as_tensor(sil_vec, dtype=torch.float32).reshape(self.c_dim)
        else:
            fill = REFERENCE_MEL_PAD if data_type == "melspec" else 0.0
            self.silence = torch.full((self.c_dim,), fill)

    @classmethod
    def from_config(cls, cfg, sil_vec_path=None):
        """Collate for a TrainConfig; sil_vec_path (or cfg.sil_vec_path) names a (c_dim,) .pt padding vector."""
        path = sil_vec_path or getattr(cfg, "sil_vec_path", "")
        c_dim = _get(cfg, "c_dim")
        sil = load_silence_vector(path, c_dim) if path else None
        return cls(_get(cfg.rp_w_cfg, "seq_len"), _get(cfg, "data_type"), c_dim, sil)

    def __call__(self, batch):
        L, C = self.seq_len, self.c_dim
        feats = self.silence.expand(len(batch), L, C).clone()
        lengths = torch.empty(len(batch), dtype=torch.int64)
        for b, (x, _) in enumerate(batch):
            x = x.reshape(-1, 1) if self.data_type == "wav" else x
            if x.dim() != 2 or x.shape[1] != C:
                raise DatasetError(f"batch item {b}: shape {tuple(x.shape)}, expected (frames, {C})")
            n = x.shape[0]
            if n <= L:
                feats[b, :n] = x
                if L - n < n:  # tile once, only when the item covers more than half of seq_len
                    feats[b, n:] = x[: L - n]
            else:
                start = random.randint(0, n - L - 1)  # inclusive bounds: n - L itself is never drawn
                feats[b] = x[start : start + L]
            lengths[b] = min(n, L)
        z = torch.stack([z if self.data_type == "wav" else z[0] for _, z in batch])
        return feats, lengths, None, z


def stop_workers(batches):
    """Shut a DataLoader iterator's worker processes down now (no-op for None or a single-process iterator).

    Training workers ignore SIGTERM (the main process checkpoints first), so a worker still alive after the
    iterator's own shutdown would make multiprocessing's exit handler (SIGTERM, then join) wait forever: such a
    worker is killed. The wait is bounded.
    """
    workers = list(getattr(batches, "_workers", []))
    if not workers:
        return
    batches._shutdown_workers()  # asks each worker to stop, joins with a timeout, then SIGTERMs (ignored)
    for w in workers:
        if w.is_alive():
            w.kill()
            w.join(WORKER_KILL_S)


def discover_files(root):
    """All *.pt under root (recursive); if none, all .wav, .mp3 and .flac together. Sorted path strings."""
    if not Path(root).is_dir():
        raise DatasetError(f"train_root {root} is not a directory")
    for exts in ((FEATURE_EXT,), AUDIO_EXTS):
        files = sorted(f for ext in exts for f in glob.glob(os.path.join(str(root), "**", "*" + ext), recursive=True))
        if files:
            return files
    raise DatasetError(f"train_root {root} holds no .pt feature files and no {'/'.join(AUDIO_EXTS)} audio")


def feature_path(audio_path, train_root):
    """Split-CSV audio path -> cached feature path: train_root/<label>/<name>.pt (reference note 27)."""
    p = Path(audio_path)
    return Path(train_root) / p.parent.name / (p.stem + FEATURE_EXT)


def split_feature_files(csv_path, key, data_type, train_root=None):
    """File list of a split CSV (column `path`), every file checked. With a train_root, audio paths are mapped into
    that feature cache (always for hubert_L6; for melspec when the cache holds the first row's features)."""
    if not csv_path:
        raise DatasetError(f"use_sc09_splits=true needs {key}=<csv from split_data.py>")
    if not Path(csv_path).is_file():
        raise DatasetError(
            f"{key}={csv_path}: no such file; create the splits with "
            "`python split_data.py --root_path <speech commands root> --sc09_only true`"
        )
    try:
        columns, records = read_csv(csv_path)
    except SplitError as e:
        raise DatasetError(f"{key}={e}") from None
    if columns is None or "path" not in columns:
        raise DatasetError(
            f"{key}={csv_path}: expected a CSV with a 'path' column (as written by "
            f"split_data.py), found columns {columns}"
        )
    rows = [r["path"] for r in records]
    if not rows:
        raise DatasetError(f"{key}={csv_path} lists no files")
    cached = data_type == "hubert_L6" or (
        data_type == "melspec" and train_root is not None and feature_path(rows[0], train_root).is_file()
    )
    files = [feature_path(r, train_root) if cached else Path(r) for r in rows]
    missing = [(r, p) for r, p in zip(rows, files) if not p.is_file()]
    if missing and cached:
        row, feat = missing[0]
        checkpoint = " --checkpoint <hubert_base_ls960.pt>" if data_type == "hubert_L6" else ""
        raise DatasetError(
            f"{key}={csv_path}: {len(missing)} of {len(rows)} rows have no cached features, e.g. row '{row}' "
            f"-> expected {feat}. Extract them first: python hubert_feature_reader.py --csv {csv_path} "
            f"--out {train_root} --type {data_type}{checkpoint}"
        )
    if missing:
        raise DatasetError(
            f"{key}={csv_path}: {len(missing)} of {len(rows)} listed files do not exist, e.g. {missing[0][0]}"
        )
    return [str(p) for p in files]


def build_datasets(cfg):
    """(train, valid) FeatureDatasets for a TrainConfig (reference notes 23, 27)."""
    data_type = _get(cfg, "data_type")
    if _get(cfg, "use_sc09_splits"):
        root = _get(cfg, "train_root") if data_type in ("hubert_L6", "melspec") else None
        train = split_feature_files(_get(cfg, "sc09_train_csv"), "sc09_train_csv", data_type, root)
        valid = split_feature_files(_get(cfg, "sc09_valid_csv"), "sc09_valid_csv", data_type, root)
    else:
        root = _get(cfg, "train_root")
        files = discover_files(root)
        random.Random(_get(cfg, "seed")).shuffle(files)
        n_valid = int(_get(cfg, "n_valid"))
        if not 0 <= n_valid < len(files):
            raise DatasetError(
                f"n_valid={n_valid} must be in 0..{len(files) - 1} ({len(files)} files under train_root {root})"
            )
        train, valid = files[: len(files) - n_valid], files[len(files) - n_valid :]

    def make(files):
        return FeatureDataset(
            files,
            data_type,
            _get(cfg, "z_dim"),
            _get(cfg, "z_mean"),
            _get(cfg, "z_std"),
            _get(cfg, "c_dim"),
            _get(cfg, "preload"),
        )

    return make(train), make(valid)
