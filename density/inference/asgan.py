"""Inference wrapper (reference note 40) and the loaders behind the torch.hub entries.

Differences from the reference wrapper: every generation call runs under `torch.inference_mode()` (no
autograd), audio longer than 16000 samples is centre-cropped instead of returned longer, a best-FAD checkpoint
without `g_ema_state_dict` loads its training G with a warning, and checkpoints are read with
`weights_only=True`.
"""

import warnings

import torch
import torch.nn as nn
import yaml

from density.audio.signal import CLIP_SAMPLES, fit_length
from density.config import config_from_yaml, parse_config
from density.dataset import FeatureNorm
from density.models import Generator
from density.runtime.checkpoint import format_version
from density.runtime.download import fetch, resolve
from density.runtime.engine import resolve_device
from density.runtime.fileio import load_torch
from density.vocoders.vocoder import GriffinLimVocoder, HifiGAN, hifigan_hubert_config, hifigan_mel_config, load_vocoder

RELEASE = "https://github.com/RF5/simple-asgan/releases/download/v0/"
CHECKPOINT_URL = RELEASE + "asgan_hubert_ckpt_00520000_slim.pt"
VOCODER_URL = RELEASE + "g_02365000_package.pth"
HUBERT_URL = RELEASE + "hubert_base_ls960_nofinetune.pt"
# Environment variables that override the URLs above (an explicit argument wins), and give expected SHA-256s.
CHECKPOINT_URL_ENV, CHECKPOINT_SHA_ENV = "ASGAN_CHECKPOINT_URL", "ASGAN_CHECKPOINT_SHA256"
VOCODER_URL_ENV, VOCODER_SHA_ENV = "ASGAN_VOCODER_URL", "ASGAN_VOCODER_SHA256"
HUBERT_URL_ENV, HUBERT_SHA_ENV = "ASGAN_HUBERT_URL", "ASGAN_HUBERT_SHA256"
# Architecture of the released HuBERT model: the seed README's training command (reference note 3).
OFFICIAL_OVERRIDES = [
    "model=rp_w",
    "rp_w_cfg.w_layers=1",
    "rp_w_cfg.use_sg3_ff=True",
    "rp_w_cfg.D_kernel_size=5",
    "rp_w_cfg.r1_gamma=0.1",
]


class ASGANInference(nn.Module):
    """Generator + vocoder -> (N, 16000) float waveforms at 16 kHz, on the wrapper's device, without autograd.

    Attributes: g (Generator, eval), vocoder (alias hifigan), cfg (TrainConfig), feature_norm (FeatureNorm: the
    generator's outputs are de-normalised with it before the vocoder; the identity for reference checkpoints),
    z_dim, w_dim, seq_len (16000). Vocoder outputs are centre-padded (floor(n/2) zeros on the left) or
    centre-cropped to 16000 samples.
    """

    def __init__(self, g: Generator, vocoder: nn.Module, cfg, feature_norm: FeatureNorm = None):
        super().__init__()
        self.g, self.vocoder, self.cfg = g.eval(), vocoder.eval(), cfg
        self.feature_norm = feature_norm if feature_norm is not None else FeatureNorm()
        self.z_dim, self.w_dim = g.z_dim, g.w_dim
        self.seq_len = CLIP_SAMPLES

    @property
    def hifigan(self):
        return self.vocoder

    @property
    def device(self) -> torch.device:
        return self.g.preconv.bias.device

    def _vocode(self, c):
        audio = self.vocoder(self.feature_norm.denormalize(c))  # (N, 1, T)
        return fit_length(audio.squeeze(1).float(), CLIP_SAMPLES)

    @torch.inference_mode()
    def unconditional_generate(self, N: int, generator: torch.Generator = None):
        """N waveforms from z ~ N(0, I) drawn on the CPU (optionally from `generator`) -> (N, 16000)."""
        z = torch.randn(N, self.z_dim, generator=generator)
        return self.generate_from_latent(z)

    @torch.inference_mode()
    def generate_from_latent(self, z):
        """z (N, z_dim) -> (N, 16000)."""
        c = self.g(z.to(self.device), self.cfg.rp_w_cfg.seq_len)  # (N, L, c_dim)
        return self._vocode(c)

    @torch.inference_mode()
    def z2w(self, z):
        """z (N, z_dim) -> w (N, w_dim) through the mapping network."""
        return self.g.W(z.to(self.device))

    @torch.inference_mode()
    def generate_from_w(self, w):
        """w (N, w_dim) or per-layer (N, n_layers+2, w_dim) -> (N, 16000)."""
        c = self.g.forward_w(w.to(self.device), self.cfg.rp_w_cfg.seq_len)
        return self._vocode(c)


Conv2SC09Wrapper = ASGANInference


def load_generator(checkpoint, sha256=None, model_dir=None, progress=True):
    """An ASGAN checkpoint (path or URL) -> (Generator in eval mode on the CPU, TrainConfig, FeatureNorm).

    Uses `cfg_yaml` and `g_ema_state_dict` (density/runtime/checkpoint.py KEYS); a checkpoint without the EMA
    generator (the reference's ckpt_best_fad.pt) falls back to `g_state_dict` with a warning. Read with
    `weights_only=True`.
    """
    path = fetch(checkpoint, model_dir, sha256, progress)
    ckpt = load_torch(path, "ASGAN checkpoint")
    if not isinstance(ckpt, dict) or "cfg_yaml" not in ckpt:
        raise ValueError(f"{path}: no 'cfg_yaml' entry; an ASGAN checkpoint holds cfg_yaml and g_ema_state_dict")
    format_version(ckpt, path)  # absent (reference checkpoints): 0; newer than this code: an error
    try:
        cfg = config_from_yaml(ckpt["cfg_yaml"])
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: unusable cfg_yaml: {e}") from e
    if "g_ema_state_dict" in ckpt:
        state = ckpt["g_ema_state_dict"]
    elif "g_state_dict" in ckpt:
        warnings.warn(
            f"{path} has no g_ema_state_dict (a best-FAD checkpoint?); using the training "
            "generator g_state_dict instead of the EMA generator",
            stacklevel=2,
        )
        state = ckpt["g_state_dict"]
    else:
        raise ValueError(f"{path}: neither 'g_ema_state_dict' nor 'g_state_dict' found")
    g = Generator(cfg.rp_w_cfg)
    try:
        g.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: generator weights do not match the checkpoint's own cfg_yaml: {e}") from e
    return g.eval(), cfg, FeatureNorm.from_checkpoint(ckpt)


def default_vocoder(cfg, device, url=None, sha256=None, model_dir=None, progress=True) -> nn.Module:
    """The vocoder for a config when the user names none: the official HuBERT HiFi-GAN (downloaded; URL
    overridable by `url` or $ASGAN_VOCODER_URL) for hubert_L6, Griffin-Lim for melspec."""
    if cfg.data_type == "melspec":
        return GriffinLimVocoder().to(device)
    if cfg.data_type == "hubert_L6":
        return load_vocoder(
            resolve(url, VOCODER_URL_ENV, VOCODER_URL),
            device,
            resolve(sha256, VOCODER_SHA_ENV, None),
            model_dir,
            progress,
        )
    raise ValueError(f"data_type '{cfg.data_type}' has no vocoder; expected 'hubert_L6' or 'melspec'")


def load_asgan(
    checkpoint, vocoder=None, device=None, checkpoint_sha256=None, vocoder_sha256=None, model_dir=None, progress=True
) -> ASGANInference:
    """Wrapper from a checkpoint (path or URL) and a vocoder (path, URL, module, or None for `default_vocoder`)."""
    device = resolve_device(device)
    g, cfg, feature_norm = load_generator(checkpoint, checkpoint_sha256, model_dir, progress)
    if vocoder is None:
        vocoder = default_vocoder(cfg, device, None, vocoder_sha256, model_dir, progress)
    elif not isinstance(vocoder, nn.Module):
        vocoder = load_vocoder(vocoder, device, vocoder_sha256, model_dir, progress)
    return ASGANInference(g, vocoder, cfg, feature_norm).to(device).eval()


def untrained_asgan(device=None, mel=False) -> ASGANInference:
    """Randomly initialised full-size model: the released HuBERT architecture + HiFi-GAN, or the mel variant
    + a mel HiFi-GAN. For tests and speed measurements; no download."""
    if mel:
        cfg = parse_config(["model=rp_w", "preset=mel"])
        vocoder = HifiGAN(hifigan_mel_config())
    else:
        cfg = parse_config(OFFICIAL_OVERRIDES)
        vocoder = HifiGAN(hifigan_hubert_config())
    return ASGANInference(Generator(cfg.rp_w_cfg), vocoder.remove_weight_norm(), cfg).to(resolve_device(device))
