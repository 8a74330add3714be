"""Vocoders: features (B, L, C) -> waveform (B, 1, T) at 16 kHz.

- `HifiGAN`: the HiFi-GAN V1 generator (Kong et al. 2020) with configs for HuBERT layer-6 features
  (768-d at 50 Hz, 320x up-sampling) and for the mel variant (128 log-mels at 100 Hz, 160x).
- `GriffinLimVocoder`: inverts the log-mel of `density.audio.log_mel` without any training.
- `load_vocoder`: the official `torch.package` archive or this project's own state-dict checkpoints.
"""
import zipfile
from dataclasses import asdict, dataclass, field
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.package
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from density import audio
from density.download import fetch
from density.fileio import load_torch, save_torch

LRELU_SLOPE = 0.1  # HiFi-GAN's slope inside the generator
POST_LRELU_SLOPE = 0.01  # the final activation before conv_post uses torch's default slope, as HiFi-GAN V1
INIT_STD = 0.01  # HiFi-GAN init of the up-sampling and residual convolutions
PACKAGE_MARKER = ".data/extern_modules"  # written by every torch.package archive, never by torch.save
PACKAGE_PICKLE = (".", "hifigan_pkl.pt")  # (package, resource) of the pickled model in the official archive


@dataclass
class HifiGANConfig:
    in_dim: int  # feature dimension of the input frames
    upsample_rates: List[int]  # product = hop length in samples
    upsample_kernel_sizes: List[int]  # kernel k for rate u: padding (k - u) / 2 gives exactly u x the length
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: List[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilations: List[List[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)

    @property
    def hop(self) -> int:
        hop = 1
        for u in self.upsample_rates:
            hop *= u
        return hop


def hubert_config() -> HifiGANConfig:
    """HuBERT layer 6: 768-d frames at 50 Hz -> 16 kHz (hop 320)."""
    return HifiGANConfig(768, [10, 8, 2, 2], [20, 16, 4, 4])


def mel_config() -> HifiGANConfig:
    """log-mel: 128 bands at 100 Hz -> 16 kHz (hop 160)."""
    return HifiGANConfig(audio.N_MELS, [10, 4, 2, 2], [20, 8, 4, 4])


class ResBlock(nn.Module):
    """HiFi-GAN ResBlock1: pairs of (dilated conv, conv) with leaky ReLUs and a residual per pair."""

    def __init__(self, channels, kernel_size, dilations):
        super().__init__()
        self.convs1 = nn.ModuleList([nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                              padding=d * (kernel_size - 1) // 2) for d in dilations])
        self.convs2 = nn.ModuleList([nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
                                     for _ in dilations])

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class HifiGAN(nn.Module):
    """HiFi-GAN V1 generator: (B, L, in_dim) frames -> (B, 1, L * hop) waveform in [-1, 1].

    Convolutions carry weight norm (for training); call `remove_weight_norm()` before inference.
    """

    def __init__(self, cfg: HifiGANConfig):
        super().__init__()
        if len(cfg.upsample_rates) != len(cfg.upsample_kernel_sizes):
            raise ValueError(f"{len(cfg.upsample_rates)} upsample rates but {len(cfg.upsample_kernel_sizes)} kernels")
        self.cfg = cfg
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.in_dim, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            if k < u or (k - u) % 2:
                raise ValueError(f"upsample kernel {k} and rate {u}: need k >= u with k - u even")
            c_in, c_out = ch // 2 ** i, ch // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2))
            self.resblocks.extend(ResBlock(c_out, rk, d)
                                  for rk, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations))
        self.conv_post = nn.Conv1d(ch // 2 ** len(cfg.upsample_rates), 1, 7, padding=3)
        for m in [*self.ups, *self.resblocks.modules()]:
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                nn.init.normal_(m.weight, 0.0, INIT_STD)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                weight_norm(m)  # g, v derived from the initialised weight

    def forward(self, c):
        if c.dim() != 3 or c.shape[2] != self.cfg.in_dim:
            raise ValueError(f"vocoder expects (B, L, {self.cfg.in_dim}) frames, got {tuple(c.shape)}")
        B, L, C = c.shape
        x = self.conv_pre(c.transpose(1, 2))  # (B, 512, L)
        n_res = len(self.cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * n_res:(i + 1) * n_res]
            x = sum(block(x) for block in blocks) / n_res  # multi-receptive-field fusion: mean of the blocks
        x = torch.tanh(self.conv_post(F.leaky_relu(x, POST_LRELU_SLOPE)))
        assert x.shape == (B, 1, L * self.cfg.hop)
        return x

    def remove_weight_norm(self):
        """Fold weight norm into plain weights (same outputs, faster); returns self."""
        for m in self.modules():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight")
                # weight_norm also left a local load_state_dict pre-hook (weight_g/weight_v key conversion);
                # drop it so that the module pickles (torch.package, torch.save(model)).
                for key, hook in list(m._load_state_dict_pre_hooks.items()):
                    if getattr(getattr(hook, "hook", hook), "__name__", "") == "_weight_norm_compat_hook":
                        del m._load_state_dict_pre_hooks[key]
        return self


class GriffinLimVocoder(nn.Module):
    """Inverts `density.audio.log_mel` frames (B, L, 128) -> (B, 1, L * 160) by fast Griffin-Lim.

    Magnitudes come from the pseudo-inverse of the mel filter bank (negatives clamped to 0); phases from
    `n_iter` momentum Griffin-Lim iterations (Perraudin et al. 2013) started from a fixed random phase, so the
    output is deterministic. Intelligible but buzzy: a trained HiFi-GAN sounds far better.
    """

    def __init__(self, n_iter=32, momentum=0.99, seed=0):
        super().__init__()
        self.n_iter, self.momentum, self.seed = n_iter, momentum, seed
        self.register_buffer("mel_pinv", torch.linalg.pinv(audio.mel_filterbank().T), persistent=False)  # (513, 128)
        self.register_buffer("window", torch.hann_window(audio.N_FFT, periodic=True), persistent=False)
        # log_mel frame j starts at sample j*hop - PAD, so its centre is j*hop + OFFSET
        self.offset = audio.N_FFT // 2 - audio.PAD  # 80 samples

    def _stft(self, x):
        return torch.stft(x, audio.N_FFT, audio.HOP, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)

    def _istft(self, spec, length):
        return torch.istft(spec, audio.N_FFT, audio.HOP, window=self.window, center=True, length=length)

    def forward(self, c):
        if c.dim() != 3 or c.shape[2] != audio.N_MELS:
            raise ValueError(f"Griffin-Lim expects (B, L, {audio.N_MELS}) log-mels, got {tuple(c.shape)}")
        B, L, C = c.shape
        length = (L - 1) * audio.HOP  # samples spanned by the L frame centres
        if length <= audio.N_FFT // 2:
            raise ValueError(f"Griffin-Lim needs at least {audio.N_FFT // 2 // audio.HOP + 2} frames, got {L}")
        mag = (self.mel_pinv @ c.float().exp().transpose(1, 2)).clamp(min=0)  # (B, 513, L)
        g = torch.Generator().manual_seed(self.seed)
        angles = torch.polar(torch.ones(mag.shape), 2 * torch.pi * torch.rand(mag.shape, generator=g)).to(c.device)
        previous = torch.zeros_like(angles)
        for _ in range(self.n_iter):
            rebuilt = self._stft(self._istft(mag * angles, length))
            angles = rebuilt - previous * (self.momentum / (1 + self.momentum))
            angles = angles / (angles.abs() + 1e-16)
            previous = rebuilt
        wav = self._istft(mag * angles, length)  # (B, (L-1)*hop), sample 0 = centre of frame 0
        wav = F.pad(wav, (self.offset, audio.HOP - self.offset))
        assert wav.shape == (B, L * audio.HOP)
        return wav.unsqueeze(1)


def save_vocoder(model: HifiGAN, path):
    """Atomically save a HifiGAN as this project's plain checkpoint {'hifigan_cfg', 'state_dict'}."""
    save_torch({"hifigan_cfg": asdict(model.cfg), "state_dict": model.state_dict()}, path)


def _is_package(path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith(PACKAGE_MARKER) for name in archive.namelist())


def load_vocoder(path_or_url, device="cpu", sha256=None, model_dir=None, progress=True) -> nn.Module:
    """Load a vocoder in eval mode on `device` from a local path or a URL (downloaded into the hub cache).

    Two formats:
    - a `torch.package` archive holding a pickled module at ('.', 'hifigan_pkl.pt'), like the official
      HuBERT HiFi-GAN `g_02365000_package.pth`. **Opening it runs Python code stored in the archive**: load
      only the official release or an archive you made yourself; this function is only ever called on the
      official URL or on a path/URL the user names explicitly.
    - this project's checkpoint {'hifigan_cfg': dict, 'state_dict': ...} (see `save_vocoder`), read with
      `torch.load(weights_only=True)`; weight norm is folded away.
    """
    path = fetch(path_or_url, model_dir, sha256, progress)
    if _is_package(path):
        try:
            model = torch.package.PackageImporter(str(path)).load_pickle(*PACKAGE_PICKLE, map_location=device)
        except Exception as e:  # a damaged archive fails anywhere in the importer
            raise ValueError(f"{path}: not a usable torch.package vocoder (a model at {PACKAGE_PICKLE}): "
                             f"{type(e).__name__}: {e}") from e
        return model.eval()
    ckpt = load_torch(path, "vocoder checkpoint")
    if not isinstance(ckpt, dict) or not {"hifigan_cfg", "state_dict"} <= ckpt.keys():
        raise ValueError(f"{path}: a vocoder checkpoint must be a dict with 'hifigan_cfg' and 'state_dict' "
                         "(see density.vocoder.save_vocoder) or a torch.package archive")
    try:
        model = HifiGAN(HifiGANConfig(**ckpt["hifigan_cfg"]))
        if any(".parametrizations." in k for k in ckpt["state_dict"]):
            model.load_state_dict(ckpt["state_dict"])
            model.remove_weight_norm()
        else:
            model.remove_weight_norm().load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: 'hifigan_cfg' and 'state_dict' do not describe one HifiGAN: {e}") from e
    return model.to(device).eval()
