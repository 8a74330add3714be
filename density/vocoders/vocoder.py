"""Vocoders: features (B, L, C) -> waveform (B, 1, T) at 16 kHz.

- `HifiGAN`: the HiFi-GAN V1 generator (Kong et al. 2020) with configs for HuBERT layer-6 features
  (768-d at 50 Hz, 320x up-sampling) and for the mel variant (128 log-mels at 100 Hz, 160x).
- `ISTFTVocoder`: a Vocos-style vocoder (Siuzdak 2023): ConvNeXt blocks at the frame rate predict an STFT
  (log-magnitude and phase) that an inverse STFT turns into the waveform; 17-40x fewer FLOPs than HiFi-GAN V1.
- `GriffinLimVocoder`: inverts the log-mel of `density.audio.signal.log_mel` without any training.
- `VOCODER_CONFIGS` / `vocoder_config` / `build_vocoder`: named configs and fresh models (for training).
- `save_vocoder` / `load_vocoder`: this project's tagged files {'format', 'config', 'state_dict'}, the older
  {'hifigan_cfg', 'state_dict'} files and the official `torch.package` archive.

Every trained vocoder maps frame j of its input to output samples [j*hop, (j+1)*hop), so frame j's centre is
sample j*hop + hop/2 (sample 80 + 160 j for log-mels: `log_mel` frame j is centred there). Vocoders take raw
features: a run with `normalize_features` de-normalises before vocoding (`ASGANInference._vocode`).
"""

import math
import zipfile
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.package
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from density.audio import signal as audio
from density.runtime.download import fetch
from density.runtime.fileio import load_torch, save_torch

LRELU_SLOPE = 0.1  # HiFi-GAN's slope inside the generator and the discriminators
POST_LRELU_SLOPE = 0.01  # the final activation before conv_post uses torch's default slope, as HiFi-GAN V1
INIT_STD = 0.01  # HiFi-GAN init of the up-sampling and residual convolutions
PACKAGE_MARKER = ".data/extern_modules"  # written by every torch.package archive, never by torch.save
PACKAGE_PICKLE = (".", "hifigan_pkl.pt")  # (package, resource) of the pickled model in the official archive
MAX_LOG_MAG = math.log(100.0)  # ISTFTVocoder clamps predicted log-magnitudes here (Vocos: exp(.).clip(max=100))
LN_EPS = 1e-6  # LayerNorm epsilon of the ConvNeXt blocks (Vocos)
ENVELOPE_MIN = 1e-11  # smallest window-square overlap-add sum the inverse STFT divides by


@dataclass
class HifiGANConfig:
    in_dim: int  # feature dimension of the input frames
    upsample_rates: list[int]  # product = hop length in samples
    upsample_kernel_sizes: list[int]  # kernel k for rate u: padding (k - u) / 2 gives exactly u x the length
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilations: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)

    @property
    def hop(self) -> int:
        hop = 1
        for u in self.upsample_rates:
            hop *= u
        return hop


def hifigan_hubert_config() -> HifiGANConfig:
    """HuBERT layer 6: 768-d frames at 50 Hz -> 16 kHz (hop 320)."""
    return HifiGANConfig(768, [10, 8, 2, 2], [20, 16, 4, 4])


def hifigan_mel_config() -> HifiGANConfig:
    """log-mel: 128 bands at 100 Hz -> 16 kHz (hop 160)."""
    return HifiGANConfig(audio.N_MELS, [10, 4, 2, 2], [20, 8, 4, 4])


def hifigan_mel_small_config() -> HifiGANConfig:
    """log-mel HiFi-GAN with 128 initial channels (the V2 width; V1 has 512): ~1/16 of the V1 compute."""
    return HifiGANConfig(audio.N_MELS, [10, 4, 2, 2], [20, 8, 4, 4], upsample_initial_channel=128)


@dataclass
class ISTFTConfig:
    in_dim: int  # feature dimension of the input frames
    hop: int  # samples per frame (320 for HuBERT at 50 Hz, 160 for log-mels at 100 Hz)
    n_fft: int  # STFT size = hann window length; >= 2 hop and n_fft - hop even
    dim: int = 512  # channels of the ConvNeXt blocks
    intermediate_dim: int = 1536  # hidden width of each block's pointwise MLP
    num_layers: int = 8  # ConvNeXt blocks
    kernel_size: int = 7  # depthwise convolution kernel (odd)


def istft_hubert_config() -> ISTFTConfig:
    """HuBERT layer 6: 768-d frames at 50 Hz -> 16 kHz (hop 320, n_fft 1280 = 4 hops, as Vocos). Width 384 (Vocos:
    512): 9.7 M parameters, ~1 GFLOP per second of audio, ~1/40 of HiFi-GAN V1."""
    return ISTFTConfig(768, hop=320, n_fft=1280, dim=384, intermediate_dim=1152, num_layers=8)


def istft_mel_config() -> ISTFTConfig:
    """log-mel: 128 bands at 100 Hz -> 16 kHz (hop 160, n_fft 1024: the STFT of `density.audio.signal.log_mel`). The
    Vocos mel model's size (width 512, 8 blocks; 13.6 M parameters, 2.7 GFLOP per second of audio)."""
    return ISTFTConfig(audio.N_MELS, hop=audio.HOP, n_fft=audio.N_FFT, dim=512, intermediate_dim=1536, num_layers=8)


class ResBlock(nn.Module):
    """HiFi-GAN ResBlock1: pairs of (dilated conv, conv) with leaky ReLUs and a residual per pair."""

    def __init__(self, channels, kernel_size, dilations):
        super().__init__()
        self.convs1 = nn.ModuleList(
            [
                nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
                for d in dilations
            ]
        )
        self.convs2 = nn.ModuleList(
            [nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations]
        )

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
            c_in, c_out = ch // 2**i, ch // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2))
            self.resblocks.extend(
                ResBlock(c_out, rk, d) for rk, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations)
            )
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
            blocks = self.resblocks[i * n_res : (i + 1) * n_res]
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


class ConvNeXtBlock(nn.Module):
    """1-D ConvNeXt block (Vocos): depthwise conv, LayerNorm, pointwise MLP with GELU, layer scale, residual."""

    def __init__(self, dim, intermediate_dim, kernel_size, layer_scale):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x):
        """x (B, dim, L) -> (B, dim, L)."""
        h = self.dwconv(x).transpose(1, 2)  # [B, L, dim]
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))  # [B, L, dim]
        return x + (self.gamma * h).transpose(1, 2)  # [B, dim, L]


class ISTFTVocoder(nn.Module):
    """Vocos-style vocoder: (B, L, in_dim) frames -> (B, 1, L * hop) waveform (not clipped; `save_wav` clips).

    A kernel-7 convolution embeds the frames, ConvNeXt blocks process them at the frame rate, a linear head
    predicts per frame n_fft/2+1 log-magnitudes and phases, and an inverse STFT with "same" padding gives the
    waveform: frame j's hann window is centred on sample j*hop + hop/2, as the frames of `density.audio.signal.log_mel`
    (with n_fft 1024 and hop 160 the frames are exactly log_mel's). `torch.istft` is not used: center=True
    would centre frame j on sample j*hop, and center=False fails its window-overlap check at the edges.
    """

    def __init__(self, cfg: ISTFTConfig):
        super().__init__()
        if cfg.n_fft < 2 * cfg.hop or (cfg.n_fft - cfg.hop) % 2 or cfg.kernel_size % 2 == 0:
            raise ValueError(
                f"ISTFTConfig n_fft {cfg.n_fft}, hop {cfg.hop}, kernel_size {cfg.kernel_size}: "
                "need n_fft >= 2 hop, n_fft - hop even and an odd kernel_size"
            )
        self.cfg = cfg
        self.embed = nn.Conv1d(cfg.in_dim, cfg.dim, 7, padding=3)
        self.norm = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(cfg.dim, cfg.intermediate_dim, cfg.kernel_size, layer_scale=1 / cfg.num_layers)
            for _ in range(cfg.num_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.head = nn.Linear(cfg.dim, cfg.n_fft + 2)  # n_fft/2+1 log-magnitudes, then n_fft/2+1 phases
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Conv1d, nn.Linear)):  # Vocos: truncated normal, std 0.02, zero bias
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def spectrum(self, c):
        """c (B, L, in_dim) -> complex STFT (B, n_fft/2+1, L)."""
        if c.dim() != 3 or c.shape[2] != self.cfg.in_dim:
            raise ValueError(f"vocoder expects (B, L, {self.cfg.in_dim}) frames, got {tuple(c.shape)}")
        x = self.embed(c.transpose(1, 2))  # [B, dim, L]
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)  # [B, dim, L]
        for block in self.blocks:
            x = block(x)  # [B, dim, L]
        h = self.head(self.final_norm(x.transpose(1, 2))).transpose(1, 2)  # [B, n_fft + 2, L]
        log_mag, phase = h.float().chunk(2, dim=1)  # [B, n_fft/2+1, L] each
        mag = log_mag.clamp(max=MAX_LOG_MAG).exp()  # [B, n_fft/2+1, L]
        return torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))  # [B, n_fft/2+1, L]

    def istft(self, spec):
        """Inverse STFT with "same" padding: spec (B, n_fft/2+1, L) -> (B, L * hop), frame j centred on sample
        j*hop + hop/2; overlap-added windowed frames divided by the overlap-added squared window."""
        L = spec.shape[-1]
        n_fft, hop = self.cfg.n_fft, self.cfg.hop
        pad = (n_fft - hop) // 2  # trimmed on each side
        frames = torch.fft.irfft(spec, n_fft, dim=1) * self.window[:, None]  # [B, n_fft, L]
        span = (L - 1) * hop + n_fft  # samples covered by the L windows
        fold = dict(output_size=(1, span), kernel_size=(1, n_fft), stride=(1, hop))
        wav = F.fold(frames, **fold)[:, 0, 0, pad : pad + L * hop]  # [B, L*hop]
        window_sq = self.window.square()[None, :, None].expand(1, n_fft, L)  # [1, n_fft, L]
        envelope = F.fold(window_sq, **fold)[0, 0, 0, pad : pad + L * hop]  # [L*hop]
        return wav / envelope.clamp(min=ENVELOPE_MIN)  # [B, L*hop]

    def forward(self, c):
        """c (B, L, in_dim) -> (B, 1, L * hop)."""
        B, L, _ = c.shape
        wav = self.istft(self.spectrum(c)).unsqueeze(1)  # [B, 1, L*hop]
        assert wav.shape == (B, 1, L * self.cfg.hop)
        return wav


GRIFFIN_LIM_MAX_LOG_MEL = 20.0  # log-mel ceiling before exp: real audio stays below 3 (full-scale square wave 2.8)
# Griffin-Lim iterations for audio meant to be heard: generate.py, edit.py, the hub models, training's FAD, and the
# vocoder comparison (density.evaluation.vocoders), which scores Griffin-Lim as a listener gets it.
GRIFFIN_LIM_LISTENING_ITERS = 32
# Griffin-Lim iterations for audio meant to be classified: evaluate.py's Griffin-Lim row, mel checkpoints scored
# without --vocoder and diagnose.py ceiling. The classifier reads a coarse 32-band mel, nearly blind to phase: on
# 512 demo test clips 8 iterations gave FID and IS within 0.3 % of 32 iterations at a quarter of the time.
GRIFFIN_LIM_SCORING_ITERS = 8


class GriffinLimVocoder(nn.Module):
    """Inverts `density.audio.signal.log_mel` frames (B, L, 128) -> (B, 1, L * 160) by fast Griffin-Lim.

    Log-mels above GRIFFIN_LIM_MAX_LOG_MEL are clipped to it: no waveform in [-1, 1] comes near, but a diverged
    generator's outliers (118 was seen) would overflow float32 and make NaN audio. Magnitudes come from the
    pseudo-inverse of the mel filter bank (negatives clamped to 0); phases from
    `n_iter` momentum Griffin-Lim iterations (Perraudin et al. 2013) started from a fixed random phase, so the
    output is deterministic. Intelligible but buzzy: a trained HiFi-GAN sounds far better.
    """

    def __init__(self, n_iter=GRIFFIN_LIM_LISTENING_ITERS, momentum=0.99, seed=0):
        super().__init__()
        self.n_iter, self.momentum, self.seed = n_iter, momentum, seed
        self.register_buffer("mel_pinv", torch.linalg.pinv(audio.mel_filterbank().T), persistent=False)  # (513, 128)
        self.register_buffer("window", torch.hann_window(audio.N_FFT, periodic=True), persistent=False)
        # log_mel frame j starts at sample j*hop - PAD, so its centre is j*hop + OFFSET
        self.offset = audio.N_FFT // 2 - audio.PAD  # 80 samples

    def _stft(self, x):
        return torch.stft(
            x, audio.N_FFT, audio.HOP, window=self.window, center=True, pad_mode="reflect", return_complex=True
        )

    def _istft(self, spec, length):
        return torch.istft(spec, audio.N_FFT, audio.HOP, window=self.window, center=True, length=length)

    def forward(self, c):
        if c.dim() != 3 or c.shape[2] != audio.N_MELS:
            raise ValueError(f"Griffin-Lim expects (B, L, {audio.N_MELS}) log-mels, got {tuple(c.shape)}")
        B, L, C = c.shape
        length = (L - 1) * audio.HOP  # samples spanned by the L frame centres
        if length <= audio.N_FFT // 2:
            raise ValueError(f"Griffin-Lim needs at least {audio.N_FFT // 2 // audio.HOP + 2} frames, got {L}")
        mel = c.float().clamp(max=GRIFFIN_LIM_MAX_LOG_MEL).exp().transpose(1, 2)  # (B, 128, L)
        mag = (self.mel_pinv @ mel).clamp(min=0)  # (B, 513, L)
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


FORMATS = {"hifigan": (HifiGAN, HifiGANConfig), "istft": (ISTFTVocoder, ISTFTConfig)}  # file tag -> classes
VOCODER_CONFIGS = {  # name -> (format, config function), for training command lines (vocoder=istft_mel)
    "hifigan_hubert": ("hifigan", hifigan_hubert_config),
    "hifigan_mel": ("hifigan", hifigan_mel_config),
    "hifigan_mel_small": ("hifigan", hifigan_mel_small_config),
    "istft_hubert": ("istft", istft_hubert_config),
    "istft_mel": ("istft", istft_mel_config),
}


def vocoder_config(name) -> tuple[str, HifiGANConfig | ISTFTConfig]:
    """A name of VOCODER_CONFIGS -> (format, a fresh config), e.g. vocoder_config('istft_mel')."""
    if name not in VOCODER_CONFIGS:
        raise ValueError(f"unknown vocoder config '{name}'; choose one of {', '.join(VOCODER_CONFIGS)}")
    fmt, make = VOCODER_CONFIGS[name]
    return fmt, make()


def build_vocoder(fmt, config: dict | HifiGANConfig | ISTFTConfig) -> nn.Module:
    """A freshly initialised vocoder in training mode (HiFi-GAN with weight norm on) from a format ('hifigan' or
    'istft') and its config (dataclass or dict), e.g. build_vocoder(*vocoder_config('istft_mel'))."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown vocoder format '{fmt}'; expected one of {', '.join(FORMATS)}")
    cls, cfg_cls = FORMATS[fmt]
    if isinstance(config, dict):
        try:
            config = cfg_cls(**config)
        except TypeError as e:
            raise ValueError(f"not a {cfg_cls.__name__}: {e}") from e
    if not isinstance(config, cfg_cls):
        raise ValueError(
            f"format '{fmt}' needs a {cfg_cls.__name__} or a dict of its fields, got {type(config).__name__}"
        )
    return cls(config)


def vocoder_format(model) -> str:
    """'hifigan' or 'istft': the file tag of a HifiGAN / ISTFTVocoder."""
    for fmt, (cls, _) in FORMATS.items():
        if type(model) is cls:
            return fmt
    raise ValueError(f"cannot save a {type(model).__name__}; save_vocoder takes a HifiGAN or an ISTFTVocoder")


def save_vocoder(model: nn.Module, path):
    """Atomically save a HifiGAN or ISTFTVocoder as {'format': 'hifigan' | 'istft', 'config': dict of its config,
    'state_dict': ...} (a HiFi-GAN may still carry weight norm: `load_vocoder` folds it)."""
    save_torch({"format": vocoder_format(model), "config": asdict(model.cfg), "state_dict": model.state_dict()}, path)


def _is_package(path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith(PACKAGE_MARKER) for name in archive.namelist())


def _from_checkpoint(ckpt, path) -> nn.Module:
    """A loaded vocoder dict (tagged, or the older {'hifigan_cfg', 'state_dict'}) -> model, weight norm folded."""
    if isinstance(ckpt, dict) and {"format", "config", "state_dict"} <= ckpt.keys():
        fmt, config = ckpt["format"], ckpt["config"]
    elif isinstance(ckpt, dict) and {"hifigan_cfg", "state_dict"} <= ckpt.keys():
        fmt, config = "hifigan", ckpt["hifigan_cfg"]
    else:
        raise ValueError(
            f"{path}: a vocoder checkpoint must be a dict with 'format', 'config' and 'state_dict' "
            "(or the older 'hifigan_cfg' and 'state_dict'; see density.vocoder.save_vocoder) or a "
            "torch.package archive"
        )
    if fmt not in FORMATS:
        raise ValueError(
            f"{path}: unknown vocoder format {fmt!r}; this code reads {', '.join(FORMATS)} "
            "(a file from a newer version? update this code)"
        )
    cls = FORMATS[fmt][0]
    state = ckpt["state_dict"]
    try:
        model = build_vocoder(fmt, config)
        if cls is HifiGAN and not any(".parametrizations." in k for k in state):
            model.remove_weight_norm()
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{path}: its config and state_dict do not describe one {cls.__name__} ({e}); "
            "re-save the model with density.vocoder.save_vocoder"
        ) from e
    return model.remove_weight_norm() if cls is HifiGAN else model


def load_vocoder(path_or_url, device="cpu", sha256=None, model_dir=None, progress=True) -> nn.Module:
    """Load a vocoder in eval mode on `device` from a local path or a URL (downloaded into the hub cache).

    Formats:
    - a `torch.package` archive holding a pickled module at ('.', 'hifigan_pkl.pt'), like the official
      HuBERT HiFi-GAN `g_02365000_package.pth`. **Opening it runs Python code stored in the archive**: load
      only the official release or an archive you made yourself; this function is only ever called on the
      official URL or on a path/URL the user names explicitly.
    - this project's checkpoint {'format': 'hifigan' | 'istft', 'config': dict, 'state_dict': ...} (see
      `save_vocoder`) or the older {'hifigan_cfg': dict, 'state_dict': ...}, read with
      `torch.load(weights_only=True)`; HiFi-GAN weight norm is folded away.
    """
    path = fetch(path_or_url, model_dir, sha256, progress)
    if _is_package(path):
        try:
            model = torch.package.PackageImporter(str(path)).load_pickle(*PACKAGE_PICKLE, map_location=device)
        except Exception as e:  # a damaged archive fails anywhere in the importer
            raise ValueError(
                f"{path}: not a usable torch.package vocoder (a model at {PACKAGE_PICKLE}): {type(e).__name__}: {e}"
            ) from e
        return model.eval()
    model = _from_checkpoint(load_torch(path, "vocoder checkpoint"), path)
    return model.to(device).eval()
