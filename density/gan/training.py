"""The pieces of ASGAN's training loop (reference notes 28-33), each in one place: where training stands
(`TrainState`), the phase schedule, one D step and one G step, the EMA generator, and the per-step logging.

    state = TrainState(ada=aug)                                   # or state.load_state_dict(checkpoint, ...)
    phase = next_phase(engine, state)                             # the ADA skip draw, every step
    stats = d_step(...) if phase == 'D' else g_step(...)          # -> {'finite': ..., 'd_loss': ..., ...}
    state.record(stats, cfg.update_ratio)                         # counters, d_update_perc, latest values
    log_step(...)                                                 # smoothed losses, stdout, tensorboard
    checkpoint.training_checkpoint(..., train_state=state.state_dict(rng_states))
"""

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from density.audio.plots import grad_norm_figure
from density.augment import Augmenter
from density.losses import discriminator_loss, generator_loss, r1_penalty
from density.metrics import distance_heuristic, drift
from density.runtime.engine import mean_over_ranks, optimise
from density.runtime.run import seed_all

log = logging.getLogger("train_asgan")

ADA_NOISE_STD = {"hubert_L6": 0.05, "wav": 0.05, "melspec": 0.2}  # ADA noise per data type (reference note 21)
NEVER_SKIP_EVERY = 16  # a D phase on a multiple of 16 steps is never turned into a G phase by the ADA skip
LOSS_SMOOTHING, R1_SMOOTHING = 0.1, 0.2  # EMA factors of the logged smoothed losses
R1_LOG_MIN = 1e-8  # R1 values at or below this (phases without R1) do not enter the smoothed R1
D_UPDATE_RATE = 0.05  # EMA factor of d_update_perc
LOG_AFTER = 5  # smoothed losses, stdout and tensorboard start after this step (reference)
LATEST_KEYS = ("g_loss", "d_loss", "r1")  # latest raw values kept in checkpoints (the first stdout line after resume)


# ---------------------------------------------------------------- where training stands


@dataclass
class TrainState:
    """Everything besides models and optimisers that a checkpoint needs to continue exactly.

    steps: steps finished (the global index of the next step); epoch and batch_index: the next batch's position;
    phase 'D' | 'G' and counter (steps in it, for update_ratio); d_update_perc; best_fad; smoothed (EMA of the
    losses, for tensorboard); latest (last raw values, for stdout and tensorboard); ada (the Augmenter, whose
    state is checkpointed); rng (this rank's generator states to restore once the data position is reached).
    """

    ada: Augmenter
    steps: int = 0
    epoch: int = 0
    batch_index: int = 0
    phase: str = "D"
    counter: int = 0
    d_update_perc: float = 1.0
    best_fad: float = math.inf
    smoothed: dict = field(default_factory=dict)
    latest: dict = field(default_factory=dict)
    rng: Any | None = None

    def state_dict(self, rng_states):
        """The checkpoint entries (density/checkpoint.py) of the state after the last finished step.

        rng_states: one density.checkpoint.rng_state() per rank.
        """
        return {
            "steps": self.steps - 1,
            "epoch": self.epoch,
            "train_state": {
                "phase": self.phase,
                "counter": self.counter,
                "batch_index": self.batch_index,
                "d_update_perc": self.d_update_perc,
                "best_fad": self.best_fad,
                "smoothed": self.smoothed,
                "latest": {k: float(self.latest[k]) for k in LATEST_KEYS if k in self.latest},
            },
            "ada_state": self.ada.state_dict(),
            "rng_state": rng_states,
        }

    def load_state_dict(self, state, *, rank, world_size, seed):
        """Continue from a checkpoint dict; False when it has no resume state (a reference checkpoint: the
        epoch restarts at its first batch, ADA at aug_init_p). A rank the writing run did not have gets fresh
        random streams, distinct from those it drew before."""
        self.steps, self.epoch = state["steps"] + 1, max(0, state["epoch"])
        if "train_state" not in state:
            return False
        ts = state["train_state"]
        self.phase, self.counter, self.batch_index = ts["phase"], ts["counter"], ts["batch_index"]
        self.d_update_perc, self.best_fad, self.smoothed = ts["d_update_perc"], ts["best_fad"], dict(ts["smoothed"])
        self.latest.update(ts["latest"])
        self.ada.load_state_dict(state["ada_state"])
        if rank < len(state["rng_state"]):  # one entry per rank of the run that wrote it
            self.rng = state["rng_state"][rank]
        else:
            seed_all(seed + rank + self.steps * world_size)
        return True

    def record(self, stats, update_ratio):
        """After a D or G step: d_update_perc, the latest values, the phase counter (reference note 29)."""
        stats = dict(stats)
        finite, d_updated = stats.pop("finite"), stats.pop("d_updated", False)
        self.d_update_perc += D_UPDATE_RATE * (float(d_updated) - self.d_update_perc)
        self.latest.update(stats)
        self.counter += 1
        if self.counter >= update_ratio:
            self.counter, self.phase = 0, "G" if self.phase == "D" else "D"
        return finite

    def smooth(self):
        """Fold the latest losses into the smoothed ones (main rank, after LOG_AFTER steps)."""
        for key in ("g_loss", "d_loss"):
            if key in self.latest and math.isfinite(self.latest[key]):
                self.smoothed[key] = smoothed(self.smoothed.get(key), self.latest[key], LOSS_SMOOTHING)
        if float(self.latest.get("r1", 0.0)) > R1_LOG_MIN:
            self.smoothed["r1"] = smoothed(self.smoothed.get("r1"), float(self.latest["r1"]), R1_SMOOTHING)


def smoothed(old, new, rate):
    return new if old is None else old + rate * (new - old)


# ---------------------------------------------------------------- the phase schedule (reference notes 22, 29)


def next_phase(engine, state):
    """This step's phase. Draws the ADA skip every step (python `random`, rank 0's draw for every rank): a D
    phase becomes a G phase with probability p, except on multiples of NEVER_SKIP_EVERY steps."""
    skip = torch.tensor([float(random.random() < state.ada.p)])
    if engine.world_size > 1:
        skip = engine.all_sum((skip * engine.is_main).to(engine.device))
    if state.phase == "D" and skip.item() and state.steps % NEVER_SKIP_EVERY != 0:
        state.phase = "G"
    return state.phase


def takes_d_update(cfg, batch_index, loss_d):
    """A D phase updates D iff (batch index % update_ratio == 0 or L_D > max threshold) and L_D > min threshold
    (L_D without R1, averaged over ranks)."""
    return (
        batch_index % cfg.update_ratio == 0 or loss_d > cfg.d_loss_update_max_threshold
    ) and loss_d > cfg.d_loss_update_min_threshold


def r1_due(cfg, steps):
    return steps > 0 and steps % cfg.rp_w_cfg.apply_r1_every == 0


# ---------------------------------------------------------------- one D step, one G step


def d_forward(cfg, engine, G, D, aug, real, z, r1_step):
    """D phase up to the loss (reference note 30): G(z) without grad, augment, D on both, L_D and (if r1_step) R1.

    real (B, L, C), z (B, z_dim) -> (loss_d, r1, d_real (B, 1), d_fake (B, 1)); r1 is 0 without R1.
    """
    with engine.autocast():
        with torch.no_grad():
            fake = G(z, cfg.rp_w_cfg.seq_len, update_ema=True)
        real, fake = aug(real, fake)
        d_fake = D(fake)
        real.requires_grad_(r1_step)
        d_real = D(real)
        loss_d = discriminator_loss(d_real, d_fake)
        r1 = r1_penalty(d_real, real, cfg.rp_w_cfg.r1_gamma) if r1_step else torch.zeros((), device=real.device)
    return loss_d, r1, d_real, d_fake


def g_forward(cfg, engine, G, D, aug, real, z):
    """G phase up to the loss (reference note 31): G(z), augment, L_G through D with D's parameters frozen
    (their gradients would be discarded anyway). -> (loss_g, d_fake (B, 1), real_aug, fake_aug (B, L, C))."""
    D.module.requires_grad_(False)
    with engine.autocast():
        fake = G(z, cfg.rp_w_cfg.seq_len, update_ema=True)
        real, fake = aug(real, fake)
        d_fake = D.module(fake)
        loss_g = generator_loss(d_fake)
    D.module.requires_grad_(True)
    return loss_g, d_fake, real, fake


def d_step(cfg, engine, G, D, aug, real, z, *, steps, batch_index, grad_norms=None):
    """One D phase: L_D (+ R1 on its cadence), the update if the schedule takes it, the ADA statistics.

    real (B, L, C) normalised features, z (B, z_dim) -> stats: finite, d_updated, d_loss (L_D + R1, averaged over
    ranks), d_loss_no_r1, r1, d_fake and d_real (batch means), d_grad_norm (when D was stepped).
    """
    D.zero_grad()
    loss_d, r1, d_real, d_fake = d_forward(cfg, engine, G, D, aug, real, z, r1_due(cfg, steps))
    total = loss_d + r1
    l_d, l_total = mean_over_ranks(engine, loss_d, total)
    stats = {"finite": math.isfinite(l_total), "d_updated": False}
    if not stats["finite"]:
        log.warning(
            "step %d: non-finite %s (%s); D update skipped",
            steps,
            "D loss" if not math.isfinite(l_d) else "R1 penalty",
            l_total,
        )
    elif takes_d_update(cfg, batch_index, l_d):
        stats["d_grad_norm"] = optimise(D, total, "D", steps, grad_norms)
        stats["finite"] = stats["d_updated"] = math.isfinite(stats["d_grad_norm"])
    if cfg.data_type != "wav" and math.isfinite(l_d):  # a NaN D(real) would void p's update
        aug.accumulate(d_real, engine.all_sum)
    return dict(
        stats,
        d_loss=l_total,
        d_loss_no_r1=l_d,
        r1=r1.detach(),
        d_fake=d_fake.detach().float().mean(),
        d_real=d_real.detach().float().mean(),
    )


def g_step(cfg, engine, G, D, aug, real, z, *, steps, grad_norms=None):
    """One G phase: L_G through the frozen D, the update, drift and distance metrics of the augmented batch.

    real (B, L, C), z (B, z_dim) -> stats: finite, g_loss (averaged over ranks), mean_drift, var_drift,
    dist_loss, d_fake (batch mean), g_grad_norm (when the loss was finite).
    """
    G.zero_grad()
    loss_g, d_fake, real, fake = g_forward(cfg, engine, G, D, aug, real, z)
    with torch.no_grad():
        mean_drift, var_drift = drift(real, fake)
        dist_loss = distance_heuristic(real, fake)
    (l_g,) = mean_over_ranks(engine, loss_g)
    stats = {"finite": math.isfinite(l_g)}
    if not stats["finite"]:
        log.warning("step %d: non-finite G loss (%s); G update skipped", steps, l_g)
    else:
        stats["g_grad_norm"] = optimise(G, loss_g, "G", steps, grad_norms)
        stats["finite"] = math.isfinite(stats["g_grad_norm"])
    return dict(
        stats,
        g_loss=l_g,
        mean_drift=mean_drift,
        var_drift=var_drift,
        dist_loss=dist_loss,
        d_fake=d_fake.detach().float().mean(),
    )


# ---------------------------------------------------------------- set-up helpers


def base_lrs(cfg):
    """-> ([G main, G mapping net W], [D]) learning rates before any decay (reference note 28)."""
    w_lr = cfg.lr if cfg.rp_w_cfg.equalized_lr else cfg.lr * cfg.rp_w_cfg.w_lr_mult  # eq-lr applies w_lr_mult in W
    return [cfg.lr, w_lr], [cfg.lr * cfg.d_lr_mult]


def build_g_optimizer(cfg, g):
    """Adam for G: group 0 ff, preconv, layers, head; group 1 the mapping net W (reference note 28)."""
    (g_lr, w_lr), _ = base_lrs(cfg)
    main = [p for m in (g.ff, g.preconv, g.layers, g.head) for p in m.parameters()]
    return torch.optim.Adam(
        [{"params": main, "lr": g_lr}, {"params": list(g.W.parameters()), "lr": w_lr}], betas=tuple(cfg.betas)
    )


def build_optimizers(cfg, g, d):
    """Adam for G (build_g_optimizer) and D (reference note 28)."""
    _, (d_lr,) = base_lrs(cfg)
    return build_g_optimizer(cfg, g), torch.optim.Adam(d.parameters(), lr=d_lr, betas=tuple(cfg.betas))


def lr_multiplier(cfg, step):
    """Cosine decay from 1 at step 0 to cfg.lr_final_mult at max_steps (this project's; 1 = constant, reference)."""
    if cfg.lr_final_mult == 1:
        return 1.0
    progress = min(step / cfg.max_steps, 1.0)
    return cfg.lr_final_mult + (1 - cfg.lr_final_mult) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lrs(cfg, step, *optimizers):
    """Set the (G, D) optimizers' learning rates for this step: base_lrs(cfg) x lr_multiplier(cfg, step). Without
    decay it leaves them alone, so a resumed run keeps its checkpoint's rates as the reference does."""
    if cfg.lr_final_mult == 1:
        return
    mult = lr_multiplier(cfg, step)
    for opt, lrs in zip(optimizers, base_lrs(cfg)):
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr * mult


def make_augmenter(cfg, norm):
    """The ADA Augmenter; with feature normalisation its noise std is ADA_NOISE_STD / norm.std: ADA_NOISE_STD raw."""
    noise_std = ADA_NOISE_STD[cfg.data_type] / norm.std if norm.enabled else ADA_NOISE_STD[cfg.data_type]
    return Augmenter(noise_std, cfg.aug_init_p, adapt=cfg.ada_adapt)


@torch.no_grad()
def update_ema(g_ema, g, weight):
    """p_ema += weight * (p - p_ema) for every parameter; buffers (norm EMA, filters) are copied."""
    for p_ema, p in zip(g_ema.parameters(), g.parameters()):
        p_ema.lerp_(p.to(p_ema), weight)
    for b_ema, b in zip(g_ema.buffers(), g.buffers()):
        b_ema.copy_(b)


# ---------------------------------------------------------------- logging (main rank)


class StepLogger:
    """Stdout lines and tensorboard training scalars and gradient figures, after LOG_AFTER steps."""

    def __init__(self, cfg, writer, G, D, device, steps):
        self.cfg, self.writer, self.G, self.D, self.device = cfg, writer, G, D, device
        self.stdout_clock, self.summary_clock = [time.perf_counter(), steps], [time.perf_counter(), steps]

    def __call__(self, state, grad_norms, pbar):
        cfg, steps, last, smooth = self.cfg, state.steps, state.latest, state.smoothed
        state.smooth()
        if steps % cfg.stdout_interval == 0:
            mem = torch.cuda.max_memory_reserved(self.device) / 1e9 if self.device.type == "cuda" else 0.0
            tqdm.write(
                f"Steps: {steps}, g_loss: {last.get('g_loss', math.nan):.3f}, d_loss: "
                f"{last.get('d_loss', math.nan):.3f}, dmetric: 0.000, "
                f"s/b: {seconds_per_batch(self.stdout_clock, steps):.3f}, mem: {mem:.2f} GB"
            )
            pbar.set_postfix(p=f"{state.ada.p:.3f}")
        if steps % cfg.summary_interval == 0:
            g_groups, d_groups = self.G.optimizer.param_groups, self.D.optimizer.param_groups
            scalars = {
                "memory/sec_per_batch": seconds_per_batch(self.summary_clock, steps),
                "training/g_loss_smooth": smooth.get("g_loss"),
                "training/d_loss_smooth": smooth.get("d_loss"),
                "opt/g_lr": g_groups[0]["lr"],
                "opt/g_W_lr": g_groups[1]["lr"],
                "opt/d_lr": d_groups[0]["lr"],
                "opt/g_grad_norm": last.get("g_grad_norm"),
                "opt/d_grad_norm": last.get("d_grad_norm"),
                "training/mean_drift": last.get("mean_drift"),
                "training/var_drift": last.get("var_drift"),
                "training/dist_loss": last.get("dist_loss"),
                "training/r1_loss": smooth.get("r1"),
                "training/total_d_loss": last.get("d_loss"),
                "opt/d_update_perc": state.d_update_perc,
                "training/D(G(z))": last.get("d_fake"),
                "training/D(c)": last.get("d_real"),
                "data/ada_p": state.ada.p,
                "data/r_t": state.ada.r_t,
            }
            for tag, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(tag, float(value), steps)
        if steps % cfg.grad_summary_interval == 0 and grad_norms:
            names = [f"G.{n}" for n, _ in self.G.module.named_parameters()] + [
                f"D.{n}" for n, _ in self.D.module.named_parameters()
            ]
            self.writer.add_figure(
                "opt/grad_norms", grad_norm_figure({n: grad_norms.get(n, math.nan) for n in names}), steps
            )


def seconds_per_batch(clock, steps):
    """Wall seconds per step since clock = [time, step] was last read; restarts the clock."""
    now = time.perf_counter()
    sec = (now - clock[0]) / max(1, steps - clock[1])
    clock[:] = now, steps
    return sec
