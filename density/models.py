"""ASGAN generator (StyleGAN-style, anti-aliased, modulated 1-D convolutions) and discriminator.

docs/reference.md, reference notes 5-18. Tensors crossing the public API are frame-major (B, L, C); conv
stacks are channel-major (B, C, L). State-dict keys and parameter order equal the reference's (`RP_W`,
`RP_ConvDiscriminator`), so official checkpoints load with `strict=True`. All run-time gains are Python
floats, not buffers. In eval mode without autograd, work that depends only on the weights (scaled weights,
demodulated conv weights, resampling matrices) is done once and reused while the weights are unchanged
(`inference_cached`).
"""

import contextlib
import math
import warnings
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from .config import rp_w_section

SQRT2 = math.sqrt(2)  # gain that keeps unit variance through a (leaky) ReLU, StyleGAN convention
CLAMP = 256.0  # discriminator activation clamp, guards fp16 overflow
NORM_EMA_WEIGHT = 0.001  # rate of the running mean of x^2 that normalises each synthesis layer's input
DEMOD_EPS = 1e-8  # demodulation epsilon
MBSTD_GROUP = 4  # minibatch-std group size
MBSTD_EPS = 1e-8  # inside the minibatch-std square root


# ---------------------------------------------------------------------------------------------
# Inference cache


class _OptimiserSteps:
    """Optimiser steps taken in this process by any torch optimiser (a global step hook counts them): part of
    every cache key, because fused optimisers write weights without bumping their version counters."""

    count = 0

    @classmethod
    def hook(cls, optimizer, args, kwargs):
        cls.count += 1


register_optimizer_step_post_hook(_OptimiserSteps.hook)
_CACHE = weakref.WeakKeyDictionary()  # module -> {slot: (key, weak references to the sources, value)}
_CACHE_ON = [True]  # switched by `inference_cache`


@contextlib.contextmanager
def inference_cache(enabled):
    """Turn `inference_cached` on or off (for the whole process) inside the block: benchmarks compare the two."""
    before, _CACHE_ON[0] = _CACHE_ON[0], bool(enabled)
    try:
        yield
    finally:
        _CACHE_ON[0] = before


def _tensor_state(t):
    return t._version, t.data_ptr(), t.device, t.dtype, t.shape


def inference_cached(module, slot, sources, compute):
    """compute(), or the value it returned before for (module, slot) while the tensors `sources` are unchanged.

    Only in eval mode without autograd (`torch.no_grad()`, `torch.inference_mode()`); otherwise compute() runs
    every call. Unchanged means: the same tensor objects, with the same version counter (in-place writes: EMA
    updates, `load_state_dict`, `init_parameters`), storage, device and dtype (`.to()`), and no optimiser step
    taken since. Writes through `.data` or by raw-pointer kernels outside an optimiser are not seen. The values
    live outside the module (not in its state dict, not copied by `copy.deepcopy`, not pickled) and go with it.
    """
    if not _CACHE_ON[0] or torch.is_grad_enabled() or module.training or any(t.is_inference() for t in sources):
        return compute()
    key = (_OptimiserSteps.count, *map(_tensor_state, sources))
    slots = _CACHE.setdefault(module, {})
    hit = slots.get(slot)
    if hit is not None and hit[0] == key and all(ref() is t for ref, t in zip(hit[1], sources)):
        return hit[2]
    value = compute()
    slots[slot] = (key, [weakref.ref(t) for t in sources], value)
    return value


# ---------------------------------------------------------------------------------------------
# Layers


def _same_pad(k: int):
    """'same' zero padding: (k-1)//2 on the left, the extra zero of an even kernel on the right."""
    return (k - 1) // 2, k // 2


def conv1d_same(x, weight, bias=None, stride=1):
    """Cross-correlation with 'same' zero padding; x (B, C_in, L), weight (C_out, C_in/groups, k)."""
    left, right = _same_pad(weight.shape[-1])
    if left == right:
        return F.conv1d(x, weight, bias, stride=stride, padding=left)
    return F.conv1d(F.pad(x, (left, right)), weight, bias, stride=stride)


class _ScaledLayer(nn.Module):
    """A weight (out, in, ...) and an optional bias (out,), scaled at run time by Python-float gains.

    equalized_lr: weight gain lr_multiplier/√fan_in, bias gain lr_multiplier (fan_in: inputs per output,
    in·k unless given); otherwise both gains are 1. Construction draws torch's default weight init
    (kaiming-uniform, a=√5) and, with bias_init='torch', the default bias U(±1/√in), as nn.Linear does.
    `init_parameters()` then draws the layer's own weight init (`weight_init`):
      'auto'   N(0, 1/lr_multiplier²) under equalized lr, else the default kept;
      'zeros', 'xavier' (uniform), or a float std: N(0, std²).
    Owners call `init_parameters()` after building the sibling layers whose default draws come first: that
    order of draws fixes which model a seed builds.
    """

    def __init__(self, weight_shape, *, bias, bias_init, equalized_lr, lr_multiplier, fan_in, weight_init):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(weight_shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if not bias:
            self.bias = None
        elif bias_init == "torch":
            bound = 1 / math.sqrt(self.weight[0].numel())
            self.bias = nn.Parameter(torch.empty(weight_shape[0]).uniform_(-bound, bound))
        else:
            self.bias = nn.Parameter(torch.empty(weight_shape[0]).copy_(torch.as_tensor(bias_init)))
        fan_in = self.weight[0].numel() if fan_in is None else fan_in
        self.equalized_lr, self.lr_multiplier, self.weight_init = equalized_lr, lr_multiplier, weight_init
        self.weight_gain = lr_multiplier / math.sqrt(fan_in) if equalized_lr else 1.0
        self.bias_gain = lr_multiplier if equalized_lr else 1.0

    @torch.no_grad()
    def init_parameters(self):
        """Draw the weight init named by `weight_init` (in place); returns self."""
        if self.weight_init == "zeros":
            self.weight.zero_()
        elif self.weight_init == "xavier":
            nn.init.xavier_uniform_(self.weight)
        elif self.weight_init == "auto":
            if self.equalized_lr:
                self.weight.normal_(0.0, 1.0 / self.lr_multiplier)
        else:
            self.weight.normal_(0.0, float(self.weight_init))
        return self

    def scaled_weight(self):
        if self.weight_gain == 1:
            return self.weight
        return inference_cached(self, "weight", [self.weight], lambda: self.weight * self.weight_gain)

    def scaled_bias(self):
        if self.bias is None or self.bias_gain == 1:
            return self.bias
        return inference_cached(self, "bias", [self.bias], lambda: self.bias * self.bias_gain)


class FullyConnected(_ScaledLayer):
    """y = x·(g_w·W)ᵀ + g_b·b: (..., in_features) -> (..., out_features); W (out, in), b (out,)."""

    def __init__(
        self,
        in_features,
        out_features,
        *,
        bias=True,
        bias_init=0.0,
        equalized_lr=True,
        lr_multiplier=1.0,
        fan_in=None,
        weight_init="auto",
    ):
        super().__init__(
            (out_features, in_features),
            bias=bias,
            bias_init=bias_init,
            equalized_lr=equalized_lr,
            lr_multiplier=lr_multiplier,
            fan_in=fan_in,
            weight_init=weight_init,
        )

    def forward(self, x):
        return F.linear(x, self.scaled_weight(), self.scaled_bias())


class Conv(_ScaledLayer):
    """1-D convolution, weight (C_out, C_in, k), bias (C_out,) initialised to zero (or none)."""

    def __init__(
        self,
        c_in,
        c_out,
        kernel_size,
        *,
        bias=True,
        equalized_lr=True,
        lr_multiplier=1.0,
        fan_in=None,
        weight_init="auto",
    ):
        super().__init__(
            (c_out, c_in, kernel_size),
            bias=bias,
            bias_init=0.0,
            equalized_lr=equalized_lr,
            lr_multiplier=lr_multiplier,
            fan_in=fan_in,
            weight_init=weight_init,
        )

    def forward(self, x, stride=1, padding=None):
        """x (B, C_in, L) -> (B, C_out, L/stride); 'same' padding unless `padding` is given."""
        w, b = self.scaled_weight(), self.scaled_bias()
        if padding is None:
            return conv1d_same(x, w, b, stride)
        return F.conv1d(x, w, b, stride=stride, padding=padding)


# ---------------------------------------------------------------------------------------------
# Resampler (reference note 14)


def design_lowpass(factor: int, fc, taps_per_factor: int = 8, beta: float = 2.5) -> torch.Tensor:
    """Kaiser-windowed sinc with 8·factor+1 taps; fc 'critical' means cutoff pi/factor.

    Not normalised to unit DC gain and not multiplied by the up-factor (reference behaviour).
    """
    if fc == "critical":
        omega, centre = math.pi / factor, 1.0 / factor
    else:
        omega, centre = float(fc) * math.pi, float(fc)
    K = taps_per_factor * factor
    n = torch.arange(-K // 2, K // 2 + 1, dtype=torch.float32)
    h = torch.sin(omega * n) / (math.pi * n + 1e-8)
    h[K // 2] = centre
    window = torch.kaiser_window(K + 1, periodic=False, beta=beta, dtype=torch.float32)
    return window * h


class Resampler(nn.Module):
    """Up-sample by zero insertion + low-pass; low-pass + decimate (buffers `up_/down_lpf_filter`).

    `up` and `down` reuse their filter matrix per (length, dtype) while the filter is unchanged (`inference_cached`).
    """

    def __init__(self, up_factor=1, down_factor=1, up_fc="critical", down_fc="critical"):
        super().__init__()
        self.up_factor, self.down_factor = int(up_factor), int(down_factor)
        self.register_buffer("down_lpf_filter", design_lowpass(self.down_factor, down_fc))
        self.register_buffer("up_lpf_filter", design_lowpass(self.up_factor, up_fc))

    @staticmethod
    def filter_matrix(h, length, up=1, down=1):
        """(length, ceil(up·length/down)) matrix of: insert up-1 zeros after each sample, 'same' filter with h,
        keep every down-th sample. M[t, j] = h[up·t - down·j + K/2] (zero outside the taps).

        Resampling as one small dense matmul over time is exact and far faster on CPUs than a depthwise conv.
        """
        K = h.shape[0] - 1
        t = torch.arange(length, device=h.device)[:, None]
        j = torch.arange(-(-up * length // down), device=h.device)[None, :]
        idx = up * t - down * j + K // 2
        valid = (idx >= 0) & (idx <= K)
        return torch.where(valid, h[idx.clamp(0, K)], torch.zeros((), dtype=h.dtype, device=h.device))

    @staticmethod
    def apply_matrix(x, M):
        """x (B, C, L) @ M (L, L') over time -> (B, C, L')."""
        B, C, L = x.shape
        return (x.reshape(B * C, L) @ M).reshape(B, C, -1)

    @classmethod
    def lpf(cls, x, h, up=1, down=1):
        """Zero-insert by `up`, depthwise 'same' filter with taps h, decimate by `down`: (B, C, L) -> (B, C, L')."""
        return cls.apply_matrix(x, cls.filter_matrix(h, x.shape[2], up, down).to(x.dtype))

    def up(self, x):
        """(B, C, L) -> (B, C, U·L): y[U·t] = x[t], zeros between, then the up filter."""
        h, length = self.up_lpf_filter, x.shape[2]
        M = inference_cached(
            self, ("up", length, x.dtype), [h], lambda: self.filter_matrix(h, length, up=self.up_factor).to(x.dtype)
        )
        return self.apply_matrix(x, M)

    def down(self, x):
        """(B, C, L) -> (B, C, ceil(L/D)): the down filter evaluated at samples 0, D, 2D, ..."""
        h, length = self.down_lpf_filter, x.shape[2]
        M = inference_cached(
            self,
            ("down", length, x.dtype),
            [h],
            lambda: self.filter_matrix(h, length, down=self.down_factor).to(x.dtype),
        )
        return self.apply_matrix(x, M)


# ---------------------------------------------------------------------------------------------
# Generator (reference notes 5-13)


class MappingNetwork(nn.Module):
    """z (B, z_dim) -> w (B, w_dim): n_layers linear layers, leaky ReLU between (keys fcs.0, fcs.2, ...).

    Equalized lr: every layer W ~ N(0, 1/lr_multiplier²), b = 0, gains lr_multiplier/√fan_in and
    lr_multiplier. Plain: torch's default init, then (from the second layer on if z_dim != w_dim) b = 0 and
    W += I (reference note 5).
    """

    def __init__(self, *, z_dim, w_dim, n_layers, lr_multiplier=0.01, lrelu_coeff=0.1, equalized_lr=True):
        super().__init__()
        mods = []
        dims = [z_dim] + [w_dim] * n_layers
        first_identity = 1 if z_dim != w_dim else 0
        for i in range(n_layers):
            fc = FullyConnected(
                dims[i],
                dims[i + 1],
                bias_init=0.0 if equalized_lr else "torch",
                equalized_lr=equalized_lr,
                lr_multiplier=lr_multiplier,
            ).init_parameters()
            if not equalized_lr and i >= first_identity:
                with torch.no_grad():
                    fc.bias.zero_()
                    fc.weight.add_(torch.eye(dims[i + 1], dims[i]))
            mods += [fc, nn.LeakyReLU(lrelu_coeff) if i < n_layers - 1 else nn.Identity()]
        self.fcs = nn.Sequential(*mods)

    def forward(self, z):
        return self.fcs(z)


class FourierFeatures(nn.Module):
    """1-D sine features with a per-sample phase from w: (B, w_dim), n -> (B, n, C) (reference note 6)."""

    def __init__(self, *, w_dim, channels, init_B_std=0.1, equalized_lr=True):
        super().__init__()
        B = init_B_std * torch.randn(channels)
        self.register_buffer("B", B[B.abs().argsort()])
        self.affine = FullyConnected(w_dim, 1, equalized_lr=equalized_lr, weight_init="zeros" if equalized_lr else 0.02)
        self.mlp = FullyConnected(
            channels, channels, bias=False, equalized_lr=equalized_lr, weight_init="auto" if equalized_lr else "xavier"
        )
        self.affine.init_parameters()
        self.mlp.init_parameters()

    def forward(self, w, n):
        t = torch.linspace(0, 1, n, dtype=w.dtype, device=w.device)  # [n], both ends included
        phase = self.affine(w)  # [B, 1]
        gamma = torch.sin(2 * math.pi * (self.B[None, None, :] * t[None, :, None] + phase[:, :, None]))  # [B, n, C]
        return self.mlp(gamma)


class SynthesisInput(nn.Module):
    """StyleGAN3-style input: band-limited sines turned/shifted by w, (B, w_dim) -> (B, L0, C) (reference note 7)."""

    bandwidth = 2.0

    def __init__(self, *, w_dim, channels, length, equalized_lr=True):
        super().__init__()
        self.length = int(length)
        self.sampling_rate = self.length / 2
        f = torch.randn(channels, 2)
        r = f.square().sum(dim=1, keepdim=True).sqrt()
        f = f / (r * torch.exp(r.square() / 4)) * self.bandwidth
        order = r[:, 0].argsort()
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", f[order])
        self.register_buffer("phases", torch.rand(channels)[order] - 0.5)
        # affine(w) starts as (1, 0, 0, 0): no rotation, no translation
        self.affine = FullyConnected(
            w_dim, 4, bias_init=[1.0, 0.0, 0.0, 0.0], equalized_lr=equalized_lr, weight_init="zeros"
        )
        self.mlp = FullyConnected(channels, channels, bias=False, equalized_lr=equalized_lr)
        self.affine.init_parameters()
        self.mlp.init_parameters()

    def forward(self, w, n=None):
        """n is ignored: the output always has L0 frames (reference note 13)."""
        t = self.affine(w)  # [B, 4]: rotation (t0, t1) and translation (t2, t3)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        Bsz = w.shape[0]
        eye = torch.eye(3, device=w.device, dtype=w.dtype).expand(Bsz, 3, 3)
        R = eye.clone()
        R[:, 0, 0], R[:, 0, 1], R[:, 1, 0], R[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        T = eye.clone()
        T[:, 0, 2], T[:, 1, 2] = -t[:, 2], -t[:, 3]
        M = R @ T @ self.transform.to(w.dtype)[None]  # [B, 3, 3]
        phases = self.phases[None] + (self.freqs[None] @ M[:, :2, 2:]).squeeze(2)  # [B, C]
        freqs = self.freqs[None] @ M[:, :2, :2]  # [B, C, 2]
        amplitude = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        j = torch.arange(self.length, device=w.device, dtype=w.dtype)
        x = ((2 * j + 1) / self.length - 1) * (0.5 * self.length / self.sampling_rate)  # [L0] align_corners=False grid
        feat = torch.sin(2 * math.pi * (x[None, :, None] * freqs[:, None, :, 0] + phases[:, None, :]))  # [B, L0, C]
        return self.mlp(feat * amplitude[:, None, :])


class SynthesisLayer(nn.Module):
    """Modulated conv -> bias -> up-sample -> lrelu·√2 -> down-sample, (B, C_in, L) -> (B, C_out, L·up/down).

    Reference notes 10-12. The head is one with normalize=False, activation=False, up = down = 1.
    """

    def __init__(
        self,
        *,
        c_in,
        c_out,
        kernel_size,
        w_dim,
        up_factor,
        down_factor,
        up_cutoff,
        down_cutoff,
        lrelu_coeff=0.1,
        equalized_lr=True,
        normalize=True,
        activation=True,
    ):
        super().__init__()
        self.c_in, self.c_out, self.kernel_size = c_in, c_out, kernel_size
        self.equalized_lr, self.normalize, self.activation = equalized_lr, normalize, activation
        self.lrelu_coeff = lrelu_coeff
        self.affine = FullyConnected(w_dim, c_in, bias_init=1.0, equalized_lr=equalized_lr)
        # Under equalized lr the weight is N(0, 1); its gain 1/√(C_in·k) only acts where it is not normalised.
        self.conv = Conv(c_in, c_out, kernel_size, equalized_lr=equalized_lr)
        self.affine.init_parameters()
        self.conv.init_parameters()
        self.register_buffer("norm_ema", torch.tensor(1.0))
        self.resampler = Resampler(up_factor, down_factor, up_cutoff, down_cutoff)

    def _conv_weight(self, dtype):
        """The weight-only part of `_modulated_conv` -> (conv weight [O, I, k] in `dtype`, unit RMS per output
        channel if normalize; with normalize, the sum over k of its squares [O, I] in the weight's dtype)."""
        w = self.conv.weight  # [O, I, k]
        if not self.normalize:
            return w.to(dtype), None
        w_sq = w.square().sum(dim=2)  # [O, I]
        w_scale = (w_sq.sum(dim=1) / (self.c_in * self.kernel_size)).rsqrt()  # [O] 1/RMS, no epsilon
        w = w * w_scale[:, None, None]  # [O, I, k] unit RMS per output channel
        return w.to(dtype), w_sq * w_scale[:, None].square()  # [O, I] sum over k of the unit-RMS weights squared

    def _modulated_conv(self, x, s):
        """x [N, I, L], styles s [N, I] -> [N, O, L]: conv with per-sample weights W·s[n] (demodulated if
        normalize), computed as conv(x·s[n], W)·d[n] without forming the [N, O, I, k] weights."""
        if self.normalize:
            s = s * s.square().mean().rsqrt()  # [N, I] one RMS over the whole batch
        else:
            s = s * self.conv.weight_gain  # [N, I] the conv's equalized-lr gain, moved onto the styles
        x = x * s[:, :, None]  # [N, I, L] modulate
        w, w_sq = inference_cached(self, ("conv", x.dtype), [self.conv.weight], lambda: self._conv_weight(x.dtype))
        y = conv1d_same(x, w)  # [N, O, L]
        if self.normalize:
            gain = (s.square() @ w_sq.T + DEMOD_EPS).rsqrt()  # [N, O] demodulation
            if self.equalized_lr:
                gain = gain * self.norm_ema.rsqrt()  # [N, O] input normalisation folded in
            return y * gain[:, :, None].to(y.dtype)  # [N, O, L]
        if self.equalized_lr:
            return y * self.norm_ema.rsqrt().to(y.dtype)  # [N, O, L]
        return y

    def forward(self, x, w, update_ema=False):
        """x [B, C_in, L], w [B, w_dim] -> [B, C_out, L·up/down]; update_ema (training mode) moves norm_ema first."""
        if x.ndim != 3 or x.shape[1] != self.c_in:
            raise ValueError(f"synthesis layer input must be (B, {self.c_in}, L), got {tuple(x.shape)}")
        if self.training:
            if update_ema:
                m = x.detach().float().square().mean()
                self.norm_ema.copy_(self.norm_ema + NORM_EMA_WEIGHT * (m - self.norm_ema))
            else:
                warnings.warn(
                    "ASGAN generator is in training mode but update_ema=False: the input-norm EMA "
                    "is not updated. Call .eval() for inference.",
                    stacklevel=3,
                )
        if not self.equalized_lr:
            x = x * self.norm_ema.rsqrt().to(x.dtype)
        s = self.affine(w)  # [B, C_in]
        x = self._modulated_conv(x, s) + self.conv.bias.to(x.dtype)[None, :, None]  # [B, C_out, L]
        if self.resampler.up_factor > 1:
            x = self.resampler.up(x)  # [B, C_out, L·up]
        if self.activation:
            x = F.leaky_relu(x, self.lrelu_coeff)
        x = x * SQRT2  # also in the head, which has no activation (reference note 12)
        if self.resampler.down_factor > 1:
            x = self.resampler.down(x)  # [B, C_out, L·up/down]
        return x


def cutoff_schedule(n_layers, first_cutoff, last_cutoff, num_critical) -> torch.Tensor:
    """Geometric cutoff schedule (n_layers+1,) reaching last_cutoff for the final num_critical layers."""
    e = (torch.arange(n_layers + 1, dtype=torch.float32) / (n_layers - num_critical)).clamp(0, 1)
    return first_cutoff * (last_cutoff / first_cutoff) ** e


class Generator(nn.Module):
    """ASGAN generator "RP_W": z (B, z_dim) -> features (B, seq_len, c_dim) (reference notes 5-14).

    cfg: the `rp_w_cfg` fields (dataclass, DictConfig, dict) or a whole TrainConfig.
    """

    def __init__(self, cfg):
        super().__init__()
        cfg = rp_w_section(cfg)
        self.cfg = cfg
        self.z_dim, self.w_dim, self.c_dim = int(cfg.z_dim), int(cfg.w_dim), int(cfg.c_dim)
        self.seq_len = int(cfg.seq_len)
        eq = bool(cfg.equalized_lr)
        lrelu = float(cfg.lrelu_coeff)
        specs = [(int(c), int(k), float(length)) for c, k, length in cfg.layer_specs]
        self.n_layers = len(specs)
        self.first_len = int(specs[0][2])
        C = int(cfg.ff_channels)
        self.W = MappingNetwork(
            z_dim=self.z_dim,
            w_dim=self.w_dim,
            n_layers=int(cfg.w_layers) + 1,
            lr_multiplier=float(cfg.w_lr_mult),
            lrelu_coeff=lrelu,
            equalized_lr=eq,
        )
        if cfg.use_sg3_ff:
            self.ff = SynthesisInput(w_dim=self.w_dim, channels=C, length=self.first_len, equalized_lr=eq)
        else:
            self.ff = FourierFeatures(w_dim=self.w_dim, channels=C, init_B_std=float(cfg.init_B_std), equalized_lr=eq)
        self.preconv = Conv(C, C, 1, equalized_lr=eq).init_parameters()
        self.cutoffs = cutoff_schedule(self.n_layers, cfg.first_cutoff, cfg.last_cutoff, cfg.num_critical)
        layers, c_in, prev_len = [], C, specs[0][2]
        for i, (c_out, k, length) in enumerate(specs):
            up = 2 if length == prev_len else 4  # keep the length (x2, /2) or double it (x4, /2)
            layers.append(
                SynthesisLayer(
                    c_in=c_in,
                    c_out=c_out,
                    kernel_size=k,
                    w_dim=self.w_dim,
                    up_factor=up,
                    down_factor=2,
                    up_cutoff=self.cutoffs[i],
                    down_cutoff=self.cutoffs[i + 1],
                    lrelu_coeff=lrelu,
                    equalized_lr=eq,
                )
            )
            c_in, prev_len = c_out, length
        self.layers = nn.ModuleList(layers)
        # up = down = 1: the head's two 9-tap filters (cutoff 0.5) are built but never used
        self.head = SynthesisLayer(
            c_in=c_in,
            c_out=self.c_dim,
            kernel_size=int(cfg.head_spec[1]),
            w_dim=self.w_dim,
            up_factor=1,
            down_factor=1,
            up_cutoff=0.5,
            down_cutoff=0.5,
            lrelu_coeff=lrelu,
            equalized_lr=eq,
            normalize=False,
            activation=False,
        )

    @classmethod
    def from_config(cls, cfg):
        """Build from a TrainConfig (or its rp_w_cfg)."""
        return cls(rp_w_section(cfg))

    def _synthesise(self, ws, n_seed, update_ema):
        """ws: list of n_layers+2 tensors (B, w_dim) for ff, each layer and the head."""
        if ws[0].shape[0] == 0:
            raise ValueError("a batch of 0 latents: generate at least one sample")
        x = self.ff(ws[0], n_seed).transpose(1, 2)  # (B, C, L0)
        x = self.preconv(x)
        for layer, w in zip(self.layers, ws[1:-1]):
            x = layer(x, w, update_ema)
        x = self.head(x, ws[-1], update_ema)
        return x.transpose(1, 2)  # (B, L, c_dim)

    @torch.no_grad()
    def calibrate_norm_ema(self, z):
        """Set each layer's `norm_ema` to the mean square of its input for latents z (B, z_dim).

        That is the value training's running mean tends to. Untrained generators need it for meaningful
        outputs: with norm_ema = 1 the un-normalised resampling filters shrink the signal 2-4x per layer
        (reference note 14), so a fresh G outputs ~1e-7. Used by benchmarks and tests.
        """

        def set_input_power(layer, args):
            layer.norm_ema.fill_(args[0].float().square().mean())

        hooks = [m.register_forward_pre_hook(set_input_power) for m in [*self.layers, self.head]]
        was_training = self.training
        try:
            self.eval()(z)
        finally:
            self.train(was_training)
            for h in hooks:
                h.remove()

    def forward(self, z, seq_len=None, update_ema=False):
        """z (B, z_dim) -> (B, L, c_dim); seq_len is ignored (always L0 input frames, reference note 13)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be (B, {self.z_dim}), got {tuple(z.shape)}")
        w = self.W(z)
        return self._synthesise([w] * (self.n_layers + 2), self.first_len, update_ema)

    def forward_w(self, w, seq_len=None, update_ema=False):
        """w (B, w_dim) or per-layer (B, n_layers+2, w_dim) -> (B, L, c_dim).

        For the 1-D Fourier input, seq_len sets the seed length int(seq_len·L0/cfg.seq_len) (reference).
        """
        seq_len = self.seq_len if seq_len is None else seq_len
        n_seed = int(seq_len * (self.first_len / self.seq_len))
        if w.ndim == 2:
            ws = [w] * (self.n_layers + 2)
        else:
            if w.ndim != 3 or w.shape[1] != self.n_layers + 2:
                raise ValueError(
                    f"per-layer w must have shape (B, {self.n_layers + 2}, {self.w_dim}) "
                    f"(ff, {self.n_layers} layers, head); got {tuple(w.shape)}"
                )
            ws = list(w.unbind(1))
        return self._synthesise(ws, n_seed, update_ema)


# ---------------------------------------------------------------------------------------------
# Discriminator (reference notes 15-18)


class DiscriminatorBlock(nn.Module):
    """Residual block: (B, c_in, l) -> (B, c_out, ceil(l/down)) (reference note 16)."""

    def __init__(self, *, c_in, c_out, kernel_size, down, lrelu_coeff=0.1, equalized_lr=True):
        super().__init__()
        self.down, self.kernel_size, self.lrelu_coeff = down, kernel_size, lrelu_coeff
        self.conv0 = Conv(c_in, c_in, kernel_size, equalized_lr=equalized_lr)
        self.conv1 = Conv(c_in, c_out, kernel_size, equalized_lr=equalized_lr)
        self.skip = Conv(c_in, c_out, 1, bias=False, equalized_lr=equalized_lr)
        for conv in (self.conv0, self.conv1, self.skip):
            conv.init_parameters()
        self.resampler = Resampler(1, down)
        if down > 1:
            self.lpf = Resampler(1, 1)  # cutoff pi: a near-identity filter (reference note 14)

    def forward(self, x):
        s = self.resampler.down(x) if self.down > 1 else x  # [B, c_in, l/down]
        s = SQRT2 * self.skip(s)  # [B, c_out, l/down]
        h = F.leaky_relu(self.conv0(x).clamp(-CLAMP, CLAMP), self.lrelu_coeff)  # [B, c_in, l]
        if self.down > 1:
            h = Resampler.lpf(h, self.lpf.down_lpf_filter)
            h = self.conv1(h, stride=self.down, padding=self.kernel_size // 2)
        else:
            h = self.conv1(h)
        h = F.leaky_relu(SQRT2 * h.clamp(-CLAMP, CLAMP), self.lrelu_coeff)  # [B, c_out, l/down]
        return s + h


def minibatch_std(x, group_size=MBSTD_GROUP):
    """Append the mean std over groups of samples b = g·n + q (group q) as one channel: (B, C, L) -> (B, C+1, L)."""
    B, C, L = x.shape
    G = min(group_size, B)
    if B % G != 0:
        raise ValueError(
            f"Discriminator minibatch-std needs the batch size ({B}) to be divisible by its group "
            f"size ({G}); use a batch size that is a multiple of {G}."
        )
    y = x.float().reshape(G, B // G, C, L)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + MBSTD_EPS).sqrt().mean(dim=(1, 2))  # (n,)
    y = y.to(x.dtype).repeat(G)[:, None, None].expand(B, 1, L)
    return torch.cat([x, y], dim=1)


class DiscriminatorHead(nn.Module):
    """Minibatch-std, conv, fully connected, logit: (B, d_dim, length) -> (B, 1) (reference note 18)."""

    def __init__(self, *, d_dim, length, kernel_size, lrelu_coeff=0.1, equalized_lr=True):
        super().__init__()
        self.lrelu_coeff, self.equalized_lr = lrelu_coeff, equalized_lr
        # fan_in d_dim·k: the reference's gain leaves out the minibatch-std channel (reference note 18)
        self.conv = Conv(d_dim + 1, d_dim, kernel_size, equalized_lr=equalized_lr, fan_in=d_dim * kernel_size)
        self.fc = FullyConnected(d_dim * length, d_dim, equalized_lr=equalized_lr)
        self.out = FullyConnected(d_dim, 1, equalized_lr=equalized_lr)
        for m in (self.conv, self.fc, self.out):
            m.init_parameters()
        self.act_gain = SQRT2 if equalized_lr else 1.0

    def forward(self, x):
        y = minibatch_std(x)  # [B, d_dim+1, length]
        y = self.act_gain * F.leaky_relu(self.conv(y).clamp(-CLAMP, CLAMP), self.lrelu_coeff)  # [B, d_dim, length]
        y = self.act_gain * F.leaky_relu(self.fc(y.flatten(1)), self.lrelu_coeff)  # [B, d_dim]
        return self.out(y)


class Discriminator(nn.Module):
    """ASGAN discriminator "RP_ConvDiscriminator": (B, seq_len, c_dim) -> logits (B, 1) (reference notes 15-18).

    cfg: the `rp_w_cfg` fields, as for Generator (D_head_dim, D_kernel_size, D_block_repeats, seq_len,
    lrelu_coeff, equalized_lr); c_dim: the input feature size, default cfg.c_dim.
    """

    def __init__(self, cfg, c_dim=None):
        super().__init__()
        cfg = rp_w_section(cfg)
        self.cfg = cfg
        self.c_dim = int(cfg.c_dim if c_dim is None else c_dim)
        self.seq_len = int(cfg.seq_len)
        d_dim, kernel_size = int(cfg.D_head_dim), int(cfg.D_kernel_size)
        lrelu, eq = float(cfg.lrelu_coeff), bool(cfg.equalized_lr)
        stations, length = [], self.seq_len  # (length, channels) seen by each block, then the head
        for stage, repeats in enumerate(cfg.D_block_repeats):
            if stage == 0:  # the reference's "first-block fix": only the first station has c_dim channels
                stations += [(length, self.c_dim)] + [(length, d_dim)] * (repeats - 1)
            else:
                stations += [(length, d_dim)] * repeats
            length = math.ceil(length / 2)
        self.layers = nn.ModuleList(
            [
                DiscriminatorBlock(
                    c_in=c0,
                    c_out=c1,
                    kernel_size=kernel_size,
                    down=math.ceil(l0 / l1),
                    lrelu_coeff=lrelu,
                    equalized_lr=eq,
                )
                for (l0, c0), (l1, c1) in zip(stations[:-1], stations[1:])
            ]
        )
        self.head = DiscriminatorHead(
            d_dim=d_dim, length=stations[-1][0], kernel_size=kernel_size, lrelu_coeff=lrelu, equalized_lr=eq
        )

    @classmethod
    def from_config(cls, cfg):
        """Build from a TrainConfig: the top-level c_dim (as the reference did), the rest from rp_w_cfg."""
        return cls(cfg.rp_w_cfg, c_dim=cfg.c_dim)

    def forward(self, x):
        if x.ndim != 3 or x.shape[1:] != (self.seq_len, self.c_dim):
            raise ValueError(f"discriminator input must be (B, {self.seq_len}, {self.c_dim}), got {tuple(x.shape)}")
        x = x.transpose(1, 2)
        for block in self.layers:
            x = block(x)
        return self.head(x)


RP_W = Generator
RP_ConvDiscriminator = Discriminator
