"""The studio's model side: one checkpoint's generator and vocoder, its mean w, an optional digit classifier, the
feature front end that projects recordings into W, and digit-to-digit directions. No web code.

Every request is validated here (`StudioError`: a message for the page). Nothing is written but the checkpoint's
own caches next to it: the mean w (density/inference/latent.py `w_stats`) and the directions (`direction_path`).
Per-layer latents ("ws") are (n_ws, w_dim), n_ws = n_layers + 2: the Fourier input, each synthesis layer, the head.
"""

import math
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from density.audio.plots import log_mel_image
from density.audio.signal import CLIP_SAMPLES, SAMPLE_RATE, AudioError, fit_length, load_audio, log_mel
from density.data.splits import SC09_CLASSES
from density.demo.report import digit_predictions, heard_as
from density.evaluation.classifier import load_classifier
from density.inference import latent
from density.inference.asgan import ASGANInference, default_vocoder, load_generator
from density.inference.edit import FrontEnd, labelled_subset
from density.runtime.download import sha256_of
from density.runtime.engine import resolve_device
from density.runtime.fileio import WriteError, read_keyed, save_torch
from density.vocoders.vocoder import load_vocoder

MAX_SEED = 2**31 - 1
MAX_CLIPS = 16  # clips of one Generate request
MAX_STEPS = 12  # points of one interpolation, both ends included
MAX_PSI = 2.0  # truncation psi: 0 the mean w, 1 off
MAX_STRENGTH = 3.0  # edit strength, in units of the direction
PROJECT_STEPS = (10, 1000)  # allowed Adam steps of a projection
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MAX_UPLOAD_MB = 20
CLIP_SECONDS = (0.1, 30.0)  # accepted length of a recording; it is centre-cropped or padded to 1 s
PROJECT_LR = 0.1  # Adam learning rate in units of the spread of w (edit.py's default)
DIRECTION_FORMAT = "asgan-studio-direction-1"
DIRECTION_SPACE = "w"  # directions are differences of mean projected w
DIRECTION_STEPS = 150  # Adam steps behind each clip of a direction
DIRECTION_SEED = 0  # which clips of the CSV a direction uses
STRIP_GAP = 2  # white columns between the spectrograms of a strip


class StudioError(ValueError):
    """A refused request or an unusable set-up; the message says what to change."""


class Clip(NamedTuple):
    wav: torch.Tensor  # (16000,) float32 at 16 kHz on the CPU
    image: np.ndarray  # (128, 100, 3) uint8 log-mel spectrogram, low bands at the bottom
    caption: str  # what the clip is, and the classifier's digit and probability when there is a classifier


class Source(NamedTuple):
    """One end of an interpolation or a mix: a seed's latent, or a projected recording."""

    name: str
    ws: torch.Tensor  # (n_ws, w_dim)
    z: torch.Tensor | None  # (1, z_dim) for a seed, None for a projection


class Projected(NamedTuple):
    """A recording projected into W: what the Project tab keeps for editing, mixing and interpolating."""

    name: str
    ws: torch.Tensor  # (n_ws, w_dim)
    error: float  # final feature reconstruction error


def check_int(name, value, low, high):
    """value (int, or a float holding a whole number) in [low, high] -> int; else StudioError."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value != int(value) or not low <= value <= high:
        raise StudioError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def check_float(name, value, low, high):
    """value (a finite number) in [low, high] -> float; else StudioError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise StudioError(f"{name} must be a number from {low} to {high}, got {value!r}")
    return float(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise StudioError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def spectrogram_strip(clips):
    """The clips' spectrograms side by side, STRIP_GAP white columns apart -> (128, W, 3) uint8."""
    gap = np.full((clips[0].image.shape[0], STRIP_GAP, 3), 255, dtype=np.uint8)
    parts = [part for clip in clips for part in (clip.image, gap)][:-1]
    return np.concatenate(parts, axis=1)


class Studio:
    """One checkpoint, ready for the page's requests. Every request method validates its arguments and returns
    Clips (16 kHz, one second each)."""

    def __init__(
        self,
        checkpoint,
        *,
        vocoder=None,
        classifier=None,
        hubert=None,
        csv=None,
        device="cpu",
        w_avg_samples=latent.W_AVG_SAMPLES,
        per_label=16,
    ):
        self.checkpoint = Path(checkpoint)
        files = {"--checkpoint": checkpoint, "--vocoder": vocoder, "--classifier": classifier, "--hubert": hubert}
        for flag, path in {**files, "--csv": csv}.items():
            if path is not None and not Path(path).is_file():
                raise StudioError(f"{flag} {path}: no such file (the studio reads local files only)")
        self.model = self._load(vocoder, resolve_device(device))
        self.n_ws = self.model.g.n_layers + 2
        self.stats = latent.w_stats(self.model.g, w_avg_samples, self.checkpoint)
        self.classifier = None if classifier is None else load_classifier(classifier, self.model.device)
        self.hubert, self.csv, self.per_label = hubert, csv, per_label
        self.loss = latent.default_loss(self.model.cfg.data_type)
        self._front_end = None
        self.vocoder_name = type(self.model.vocoder).__name__

    def _load(self, vocoder, device):
        """The checkpoint's generator with the vocoder file, or Griffin-Lim for a mel checkpoint without one."""
        g, cfg, feature_norm = load_generator(self.checkpoint, progress=False)
        if vocoder is None and cfg.data_type != "melspec":
            raise StudioError(
                f"{self.checkpoint} is a {cfg.data_type} checkpoint: give its vocoder file with --vocoder (HiFi-GAN "
                "or iSTFT); the studio downloads nothing"
            )
        vocoder = default_vocoder(cfg, device) if vocoder is None else load_vocoder(vocoder, device, progress=False)
        return ASGANInference(g, vocoder, cfg, feature_norm).to(device).eval()

    # ------------------------------------------------------------------ building blocks

    def seed_source(self, seed):
        """The latent of generate.py's first sample of --seed `seed` -> Source."""
        seed = check_int("seed", seed, 0, MAX_SEED)
        z = torch.randn(1, self.model.z_dim, generator=torch.Generator().manual_seed(seed))
        return Source(f"seed {seed}", latent.broadcast(self.model.z2w(z).cpu(), self.n_ws)[0], z)

    def projected_source(self, projected):
        if projected is None:
            raise StudioError("no projected clip yet: project a recording in the Project tab first, or use a seed")
        return Source(f"projected {projected.name}", projected.ws, None)

    def synthesise(self, ws):
        """(N, [n_ws,] w_dim) -> (N, 16000) waveforms on the CPU, one clip at a time (as edit.py): Griffin-Lim's
        random initial phase depends on the batch, and a clip should not depend on which others are asked for."""
        wavs = torch.cat([self.model.generate_from_w(w[None]).cpu() for w in ws])
        if not wavs.isfinite().all():
            raise StudioError("the model made NaN or infinite audio (a diverged checkpoint?); try truncation ψ < 1")
        return wavs

    def clips(self, wavs, names):
        """(N, 16000) waveforms and their names -> Clips with spectrograms and, with a classifier, the digit."""
        captions = list(names)
        if self.classifier is not None:
            heard = [heard_as(label, p) for label, p in digit_predictions(self.classifier, wavs)]
            captions = [f"{name} · {h}" for name, h in zip(names, heard)]
        return [Clip(w, log_mel_image(log_mel(w)), c) for w, c in zip(wavs, captions)]

    # ------------------------------------------------------------------ the tabs

    def generate(self, seed, count, psi):
        """generate.py's samples 0..count-1 of `seed`, truncated toward the mean w by psi -> Clips."""
        seed = check_int("seed", seed, 0, MAX_SEED)
        count = check_int("count", count, 1, MAX_CLIPS)
        psi = check_float("truncation psi", psi, 0.0, MAX_PSI)
        z = torch.randn(count, self.model.z_dim, generator=torch.Generator().manual_seed(seed))
        w = self.model.z2w(z).cpu()
        if psi != 1:
            w = latent.truncate(w, self.stats.w_avg, psi)
        return self.clips(self.synthesise(w), [f"seed {seed} · {i}" for i in range(count)])

    def interpolate(self, a, b, steps, space, method):
        """`steps` points from Source a to Source b, both ends included, by `method` ('slerp'/'lerp') in `space`
        ('z': both must be seeds; 'w': per-layer w) -> Clips."""
        steps = check_int("steps", steps, 2, MAX_STEPS)
        check_choice("space", space, ("z", "w"))
        path = {"slerp": latent.slerp, "lerp": latent.lerp}[check_choice("method", method, ("slerp", "lerp"))]
        t = torch.linspace(0, 1, steps)
        if space == "z":
            if a.z is None or b.z is None:
                raise StudioError("interpolation in Z needs two seeds: a projected clip has only a w (choose W)")
            ws = self.model.z2w(path(a.z, b.z, t)).cpu()
        else:
            ws = path(a.ws.flatten()[None], b.ws.flatten()[None], t).reshape(steps, self.n_ws, -1)
        names = [f"{a.name} → {b.name}: {x:.2f}" for x in t.tolist()]
        return self.clips(self.synthesise(ws), names)

    def layer_names(self):
        """Names of the per-layer w indices, coarse to fine: the input, the synthesis layers, the head."""
        return ["0 input"] + [f"{i} layer" for i in range(1, self.n_ws - 1)] + [f"{self.n_ws - 1} head"]

    def mix(self, a, b, layers):
        """Source a with the w of `layers` (indices, or names from `layer_names`) taken from Source b ->
        [Clip a, Clip b, Clip mix]."""
        if isinstance(layers, (str, int)) or layers is None:
            raise StudioError("layers must be a list of layer indices")
        indices = []
        for layer in layers:
            head = str(layer).split()[0] if str(layer).strip() else ""
            if not head.isdigit() or int(head) >= self.n_ws:
                raise StudioError(f"layer {layer!r}: choose layers from 0 to {self.n_ws - 1}")
            indices.append(int(head))
        mixed = latent.swap_layers(a.ws[None], b.ws[None], indices)
        taken = ", ".join(map(str, sorted(set(indices)))) or "none"
        wavs = self.synthesise(torch.cat([a.ws[None], b.ws[None], mixed]))
        return self.clips(wavs, [f"A: {a.name}", f"B: {b.name}", f"A with layers {taken} from B"])

    def read_clip(self, path):
        """An uploaded or recorded file -> (16000,) waveform at 16 kHz, centre-cropped or padded to 1 s."""
        if path is None:
            raise StudioError("upload or record a clip first")
        path = Path(path)
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            raise StudioError(f"{path.name}: not an audio file the studio reads; use {', '.join(AUDIO_SUFFIXES)}")
        if not path.is_file():
            raise StudioError(f"{path.name}: the upload is gone; upload it again")
        if path.stat().st_size > MAX_UPLOAD_MB * 2**20:
            raise StudioError(f"{path.name}: larger than {MAX_UPLOAD_MB} MB; upload a clip of at most a few seconds")
        try:
            wav = load_audio(path, resample=True)
        except AudioError as e:
            raise StudioError(str(e).replace(str(path), path.name)) from None
        seconds = len(wav) / SAMPLE_RATE
        if not CLIP_SECONDS[0] <= seconds <= CLIP_SECONDS[1]:
            raise StudioError(
                f"{path.name}: {seconds:.2f} s long; give a clip of {CLIP_SECONDS[0]} to {CLIP_SECONDS[1]:.0f} s "
                "(the model makes 1 s: a longer clip is centre-cropped)"
            )
        return fit_length(wav, CLIP_SAMPLES)

    def front_end(self):
        """The checkpoint's feature front end (built on first use: HuBERT checkpoints load their HuBERT model)."""
        if self._front_end is None:
            try:
                self._front_end = FrontEnd(self.model, self.hubert)
            except ValueError as e:
                raise StudioError(f"{e} (start the studio with --hubert <file>)") from None
        return self._front_end

    def project(self, path, space, steps, progress=False):
        """Project a recording into W ('w') or W+ ('w+') with `steps` Adam steps -> (Projected, [Clip of the
        recording, Clip of its reconstruction]). progress: show tqdm bars (the page tracks them)."""
        check_choice("space", space, ("w", "w+"))
        steps = check_int("steps", steps, *PROJECT_STEPS)
        wav = self.read_clip(path)
        feats = self.front_end()(wav[None])
        p = latent.project(
            self.model.g,
            feats,
            stats=self.stats,
            space=space,
            steps=steps,
            lr=PROJECT_LR,
            loss=self.loss,
            batch_size=1,
            progress=progress,
        )
        name = Path(path).stem
        projected = Projected(name, latent.broadcast(p.w, self.n_ws)[0], float(p.error[0]))
        clips = self.clips(torch.stack([wav, self.synthesise(projected.ws[None])[0]]), [name, f"{name} projected"])
        return projected, clips

    # ------------------------------------------------------------------ directions

    def direction_path(self, source, target):
        """Cache file of the source -> target direction: next to the checkpoint, named after its SHA-256."""
        sha = sha256_of(self.checkpoint)[:16]
        return self.checkpoint.with_name(f"{self.checkpoint.name}.direction-{sha}-{source}_to_{target}.pt")

    def direction(self, source, target, progress=False):
        """mean(projected w of `target` clips) - mean(projected w of `source` clips) (edit.py direction), (w_dim,):
        read from its cache file, else computed from --csv (per_label clips of each) and cached."""
        check_choice("from", source, SC09_CLASSES)
        check_choice("to", target, SC09_CLASSES)
        if source == target:
            raise StudioError(f"from and to are both '{source}': choose two different digits")
        path = self.direction_path(source, target)
        key = {"format": DIRECTION_FORMAT, "checkpoint_sha256": sha256_of(self.checkpoint), "labels": [source, target]}
        cached, foreign = read_keyed(path, key, "direction cache")
        if cached is not None:
            return cached["direction"]
        if foreign:
            warnings.warn(f"{path} is not a direction of this checkpoint; leaving it alone", stacklevel=2)
        if self.csv is None:
            raise StudioError(
                f"no {source} → {target} direction next to the checkpoint yet: start the studio with --csv "
                "<labelled split CSV> (split_data.py) to compute it once"
            )
        d, n = self._compute_direction(source, target, progress)
        if not foreign:
            try:
                save_torch({**key, "direction": d, "n": n, "csv": str(self.csv), "steps": DIRECTION_STEPS}, path)
            except WriteError as e:
                warnings.warn(f"direction not cached: {e}", stacklevel=2)
        return d

    def _compute_direction(self, source, target, progress):
        try:
            groups = [
                labelled_subset(self.csv, self.per_label, DIRECTION_SEED, {label})[0] for label in (source, target)
            ]
            wavs = torch.stack([fit_length(load_audio(p, resample=True), CLIP_SAMPLES) for g in groups for p in g])
        except (ValueError, OSError) as e:
            raise StudioError(f"cannot compute the direction from {self.csv}: {e}") from None
        p = latent.project(
            self.model.g,
            self.front_end()(wavs),
            stats=self.stats,
            space=DIRECTION_SPACE,
            steps=DIRECTION_STEPS,
            lr=PROJECT_LR,
            loss=self.loss,
            batch_size=len(wavs),
            progress=progress,
        )
        n = len(groups[0])
        return latent.direction(p.w[:n], p.w[n:]), [n, len(groups[1])]

    def edit(self, projected, source, target, strength, progress=False):
        """The projected clip moved by `strength` along the source -> target direction -> [Clip]."""
        if projected is None:
            raise StudioError("no projected clip yet: project a recording first")
        strength = check_float("strength", strength, -MAX_STRENGTH, MAX_STRENGTH)
        d = self.direction(source, target, progress)
        ws = latent.edit(projected.ws[None], d, strength)
        return self.clips(self.synthesise(ws), [f"{projected.name}, {strength:+g} × ({source} → {target})"])
