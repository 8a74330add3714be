"""Latent-space operations on an ASGAN generator (Baas & Kamper 2022, and the StyleGAN papers they follow).

Interpolation, the mean w (cached per checkpoint) and truncation; projection of features into W (GAN inversion);
per-layer style mixing and voice conversion; attribute directions in W.

Per-layer w ("ws") are (B, n_ws, w_dim), n_ws = n_layers + 2, in synthesis order: the Fourier input, each
synthesis layer, the head (`Generator.forward_w`). Low indices act on short, coarse sequences, high ones on
fine detail. A plain w (B, w_dim) stands for the same w at every layer.
"""

import math
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from density.runtime.download import sha256_of
from density.runtime.fileio import WriteError, read_keyed, save_torch

W_AVG_SEED = 12345  # latents for the mean w come from their own fixed stream, apart from any sampling seed
W_AVG_BATCH = 4096  # mapping-network batch when estimating the mean w
W_AVG_SAMPLES = 10000  # default number of z behind the mean w
CACHE_FORMAT = "asgan-w-avg-1"
SPACES = ("w", "w+", "z")  # what projection optimises: one w, one w per layer, or z (through the mapping network)
LOSSES = ("l1", "l2", "cosine")
LR_RAMPUP, LR_RAMPDOWN = 0.05, 0.25  # StyleGAN2 projector schedule: warm-up and cosine ramp-down fractions


def slerp(a, b, t):
    """Spherical interpolation between rows a, b (1, D) at fractions t (S,) -> (S, D)."""
    a_n, b_n = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(-1).clamp(-1, 1))  # angle between the two latents
    if omega.item() < 1e-6:
        return lerp(a, b, t)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so)[:, None] * a + (torch.sin(t * omega) / so)[:, None] * b


def lerp(a, b, t):
    """Linear interpolation between rows a, b (1, D) at fractions t (S,) -> (S, D)."""
    return torch.lerp(a, b, t[:, None])


def truncate(w, w_avg, psi):
    """StyleGAN truncation: w_avg + psi (w - w_avg); w (B, [n_ws,] w_dim), w_avg (1, w_dim)."""
    return torch.lerp(w_avg.to(w), w, psi)


def _device(g):
    return next(g.parameters()).device


class WStats(NamedTuple):
    w_avg: torch.Tensor  # (1, w_dim) float32 on the CPU
    w_std: float  # RMS distance of w from w_avg per dimension: the natural step size in W


@torch.no_grad()
def _compute_w_stats(g, n, progress):
    gen = torch.Generator().manual_seed(W_AVG_SEED)
    total = torch.zeros(1, g.w_dim, dtype=torch.float64)
    total_sq = torch.zeros((), dtype=torch.float64)
    for start in tqdm(range(0, n, W_AVG_BATCH), desc="mean w", disable=not progress):
        z = torch.randn(min(W_AVG_BATCH, n - start), g.z_dim, generator=gen)
        w = g.W(z.to(_device(g))).double().cpu()
        total += w.sum(0, keepdim=True)
        total_sq += w.square().sum()
    w_avg = total / n
    var = (total_sq / n - w_avg.square().sum()).clamp_min(0) / g.w_dim
    return WStats(w_avg.float(), math.sqrt(var.item()))


def w_cache_path(checkpoint, n, sha256):
    """Cache file of the mean w of `checkpoint` over n z: next to it, named after its SHA-256."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.name}.w_avg-{sha256[:16]}-n{n}.pt")


def w_stats(g, n=W_AVG_SAMPLES, checkpoint=None, progress=False) -> WStats:
    """Mean and spread of W(z) over n z ~ N(0, I) drawn from a fixed seed (W_AVG_SEED).

    With `checkpoint` (the local file g was loaded from) the result is cached next to it in a file keyed by the
    checkpoint's SHA-256 (see `w_cache_path`) and read back on later calls. An existing file of that name which is
    not such a cache is left alone (warning); an unwritable folder only costs the cache (warning).
    """
    if n < 1:
        raise ValueError(f"the mean w needs at least one sample, got n={n}")
    if checkpoint is None:
        return _compute_w_stats(g, n, progress)
    sha = sha256_of(checkpoint)
    path = w_cache_path(checkpoint, n, sha)
    key = {"format": CACHE_FORMAT, "checkpoint_sha256": sha, "n": n, "seed": W_AVG_SEED}
    cached, foreign = read_keyed(path, key, "mean-w cache")
    if cached is not None:
        return WStats(cached["w_avg"], cached["w_std"])
    if foreign:
        warnings.warn(f"{path} is not the mean-w cache of {checkpoint}; leaving it alone and not caching", stacklevel=2)
        return _compute_w_stats(g, n, progress)
    stats = _compute_w_stats(g, n, progress)
    try:
        save_torch({**key, "w_avg": stats.w_avg, "w_std": stats.w_std}, path)
    except WriteError as e:
        warnings.warn(f"mean w not cached: {e}", stacklevel=2)
    return stats


def broadcast(w, n_ws):
    """(B, w_dim) -> (B, n_ws, w_dim) (the same w at every layer); per-layer ws are returned as they are."""
    if w.ndim == 3:
        if w.shape[1] != n_ws:
            raise ValueError(f"per-layer w must have {n_ws} layers, got {tuple(w.shape)}")
        return w
    return w[:, None, :].expand(-1, n_ws, -1)


def swap_layers(ws_a, ws_b, layers):
    """ws_a with the w of `layers` (indices 0..n_ws-1) taken from ws_b -> (B, n_ws, w_dim).

    ws_a, ws_b: (B, n_ws, w_dim) or plain (B, w_dim) plus n_ws from the other; B of 1 broadcasts. Voice conversion
    swaps chosen layers from the target into the source; no layers swapped returns the source."""
    n_ws = ws_a.shape[1] if ws_a.ndim == 3 else ws_b.shape[1] if ws_b.ndim == 3 else None
    if n_ws is None:
        raise ValueError("give per-layer w (B, n_ws, w_dim) for at least one side, so the layer count is known")
    a, b = torch.broadcast_tensors(broadcast(ws_a, n_ws), broadcast(ws_b.to(ws_a), n_ws))
    layers = sorted(set(int(i) for i in layers))
    if layers and not 0 <= layers[0] <= layers[-1] < n_ws:
        raise ValueError(f"layer indices must be in 0..{n_ws - 1}, got {layers}")
    out = a.clone()
    out[:, layers] = b[:, layers]
    return out


def mix(ws_coarse, ws_fine, crossover):
    """Style mixing: layers 0..crossover-1 from ws_coarse, crossover..n_ws-1 from ws_fine -> (B, n_ws, w_dim).
    crossover n_ws gives ws_coarse unchanged, 0 gives ws_fine."""
    n_ws = (ws_coarse if ws_coarse.ndim == 3 else ws_fine).shape[1]
    if not 0 <= crossover <= n_ws:
        raise ValueError(f"crossover must be in 0..{n_ws}, got {crossover}")
    return swap_layers(ws_coarse, ws_fine, range(crossover, n_ws))


def direction(w_from, w_to):
    """Attribute direction: mean(w_to) - mean(w_from) over the first axis, (N, [n_ws,] w_dim) -> ([n_ws,] w_dim)."""
    if len(w_from) == 0 or len(w_to) == 0:
        raise ValueError("a direction needs at least one latent on each side")
    return w_to.mean(0) - w_from.mean(0)


def edit(w, d, strength):
    """w + strength d: w (B, w_dim) or (B, n_ws, w_dim), d (w_dim,) or per-layer (n_ws, w_dim)."""
    if d.ndim == 2:
        w = broadcast(w, d.shape[0])
    return w + strength * d.to(w)


def feature_loss(x, y, kind):
    """Per-clip reconstruction error of x against y (B, L, C) -> (B,): mean |x-y| ('l1'), mean (x-y)^2 ('l2'), or
    the mean over frames of 1 - cosine similarity ('cosine', for HuBERT frames)."""
    if kind == "l1":
        return (x - y).abs().mean((1, 2))
    if kind == "l2":
        return (x - y).square().mean((1, 2))
    if kind == "cosine":
        return (1 - F.cosine_similarity(x, y, dim=-1)).mean(1)
    raise ValueError(f"loss must be one of {LOSSES}, got '{kind}'")


def default_loss(data_type):
    """'cosine' for HuBERT features, 'l1' for log-mels."""
    return "cosine" if data_type.startswith("hubert") else "l1"


def lr_schedule(t):
    """Learning-rate factor at fraction t of the run: linear warm-up, then cosine ramp-down (StyleGAN2 projector)."""
    ramp = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    return (0.5 - 0.5 * math.cos(math.pi * ramp)) * min(1.0, t / LR_RAMPUP)


class Projection(NamedTuple):
    w: torch.Tensor  # (B, w_dim) for spaces 'w' and 'z', (B, n_ws, w_dim) for 'w+'
    error: torch.Tensor  # (B,) final reconstruction error (feature_loss)
    z: torch.Tensor | None  # (B, z_dim) for space 'z', else None


def project(g, target, *, stats, space="w", steps=300, lr=0.1, loss="l1", batch_size=64, progress=False):
    """Find latents whose generation reproduces `target` (B, L, c_dim), features as G outputs them (normalised).

    Adam on w (or per-layer w, or z), started from w_avg (z from 0), minimising `feature_loss` for `steps` steps
    with the StyleGAN2 projector's schedule (`lr_schedule`); lr is in units of stats.w_std in W (of 1 in Z).
    Clips are optimised `batch_size` at a time, each independently of the others. g: an eval-mode Generator
    (its weights are not changed). -> Projection on the CPU, deterministic for given inputs.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got '{space}'")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    expected = (g.seq_len, g.c_dim)
    if target.ndim != 3 or tuple(target.shape[1:]) != expected:
        raise ValueError(
            f"target features must be (B, {expected[0]}, {expected[1]}) like the generator's output, "
            f"got {tuple(target.shape)}"
        )
    device = _device(g)
    n_ws = g.n_layers + 2
    if space == "z":
        start, to_w, step = torch.zeros(1, g.z_dim), g.W, lr
    else:
        start = broadcast(stats.w_avg, n_ws) if space == "w+" else stats.w_avg
        to_w, step = (lambda v: v), lr * stats.w_std
    ws, zs, errors = [], [], []
    bar = tqdm(total=steps * math.ceil(len(target) / batch_size), desc=f"project ({space})", disable=not progress)
    for chunk in target.split(batch_size):
        chunk = chunk.to(device)
        v = start.to(device).repeat(len(chunk), *[1] * (start.ndim - 1)).requires_grad_(True)
        opt = torch.optim.Adam([v], lr=step, betas=(0.9, 0.999))
        for i in range(steps):
            opt.param_groups[0]["lr"] = step * lr_schedule((i + 0.5) / steps)
            err = feature_loss(g.forward_w(to_w(v)), chunk, loss)
            (v.grad,) = torch.autograd.grad(err.sum(), v)
            opt.step()
            bar.update()
            bar.set_postfix(error=f"{err.mean().item():.4f}", refresh=False)
        with torch.no_grad():
            w = to_w(v)
            errors.append(feature_loss(g.forward_w(w), chunk, loss).cpu())
        ws.append(w.detach().cpu())
        zs.append(v.detach().cpu())
    bar.close()
    return Projection(torch.cat(ws), torch.cat(errors), torch.cat(zs) if space == "z" else None)
