"""Train ASGAN (reference notes 28-33): alternating D/G phases, ADA, R1, an EMA generator, validation, checkpoints.

    python train_asgan.py model=rp_w train_root=<features> checkpoint_path=runs/asgan n_valid=400 key=value ...
    torchrun --nproc_per_node 4 train_asgan.py model=rp_w ...               (DDP, engine=torch)
    deepspeed --num_gpus 4 train_asgan.py model=rp_w engine=deepspeed ...   (DeepSpeed)
    python train_asgan.py --help                                            (all keys and defaults)

The file reads top to bottom: parse the config, set up engine, data, models and optimisers, resume, loop.
Deliberate differences from the reference are listed in docs/reference.md (training loop).
"""
import contextlib
import copy
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf.errors import MissingMandatoryValue
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from density import checkpoint as ckpt
from density.augment import Augmenter
from density.config import ConfigError, config_to_yaml, default_config, parse_config
from density.dataset import MEL_SILENCE, Collate, DatasetError, FeatureNorm, build_datasets, stop_workers
from density.engine import EngineError, make_engine
from density.fileio import WriteError
from density.losses import discriminator_loss, generator_loss, r1_penalty
from density.metrics import (ApproxKL, closest_dist_pair, distance_heuristic, drift, fad, feature_statistics,
                             perc_closest)
from density.models import Discriminator, Generator
from density.run import RunError, catch_stop_signals, ignore_stop_signals, open_run, restore_signals, seed_all
from density.vocoder import GriffinLimVocoder, load_vocoder

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

log = logging.getLogger('train_asgan')

NOISE_STD = {'hubert_L6': 0.05, 'wav': 0.05, 'melspec': 0.2}  # ADA noise per data type (reference note 21)
NEVER_SKIP_EVERY = 16  # a D phase on a multiple of 16 steps is never turned into a G phase by the ADA skip
LOSS_SMOOTHING, R1_SMOOTHING = 0.1, 0.2  # EMA factors of the logged smoothed losses
R1_LOG_MIN = 1e-8  # R1 values at or below this (phases without R1) do not enter the smoothed R1
D_UPDATE_RATE = 0.05  # EMA factor of d_update_perc
LOG_AFTER = 5  # smoothed losses, stdout and tensorboard start after this step (reference)
EMBED_FRAMES, NEAREST_N, PERC_N = 1000, 1000, 500  # validation: embedding frames, closest_dist_pair, perc_closest
FAD_LAYER = 6  # HuBERT block whose output the melspec/wav FAD compares (reference note 33)
FAD_CHUNK = 32  # validation items vocoded and HuBERT-encoded per batch for the FAD reference statistics
MANDATORY = ('checkpoint_path', 'train_root')


class TrainingAborted(RuntimeError):
    """Too many consecutive non-finite steps."""


def build_optimizers(cfg, g, d):
    """Adam for G (group 0: ff, preconv, layers, head; group 1: mapping net W) and D (reference note 28)."""
    w_lr = cfg.lr if cfg.rp_w_cfg.equalized_lr else cfg.lr * cfg.rp_w_cfg.w_lr_mult  # eq-lr applies w_lr_mult in W
    main = [p for m in (g.ff, g.preconv, g.layers, g.head) for p in m.parameters()]
    g_opt = torch.optim.Adam([{'params': main, 'lr': cfg.lr}, {'params': list(g.W.parameters()), 'lr': w_lr}],
                             betas=tuple(cfg.betas))
    d_opt = torch.optim.Adam(d.parameters(), lr=cfg.lr * cfg.d_lr_mult, betas=tuple(cfg.betas))
    return g_opt, d_opt


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


@torch.no_grad()
def update_ema(g_ema, g, weight):
    """p_ema += weight * (p - p_ema) for every parameter; buffers (norm EMA, filters) are copied."""
    for p_ema, p in zip(g_ema.parameters(), g.parameters()):
        p_ema.lerp_(p.to(p_ema), weight)
    for b_ema, b in zip(g_ema.buffers(), g.buffers()):
        b_ema.copy_(b)


def smoothed(old, new, rate):
    return new if old is None else old + rate * (new - old)


def seconds_per_batch(clock, steps):
    """Wall seconds per step since clock = [time, step] was last read; restarts the clock."""
    now = time.perf_counter()
    sec = (now - clock[0]) / max(1, steps - clock[1])
    clock[:] = now, steps
    return sec


def cpu_state(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def mean_over_ranks(engine, *values):
    """Python floats of scalar tensors averaged over ranks (one host sync), so every rank decides alike."""
    t = torch.stack([v.detach().float() for v in values])
    return (engine.all_sum(t) / engine.world_size).tolist()


def fad_encoder(cfg, device):
    """The FAD features (reference note 33) of melspec/wav data, or None (fad_hubert_checkpoint unset: raw frames).

    Returns encode: (B, L, C) log-mels (vocoded first) or waveforms (C = 1) -> (B * frames, dim) HuBERT layer-6
    features on the CPU.
    """
    if not cfg.fad_hubert_checkpoint:
        return None
    from hubert_feature_reader import HubertFeatureReader  # imports transformers: only when this route is used
    try:
        reader = HubertFeatureReader(cfg.fad_hubert_checkpoint, layer=FAD_LAYER, device=device)
    except (OSError, ValueError) as e:
        raise ConfigError(f'fad_hubert_checkpoint={cfg.fad_hubert_checkpoint}: {e}') from e
    vocoder = None
    if cfg.data_type == 'melspec':
        try:
            vocoder = load_vocoder(cfg.fad_vocoder, device) if cfg.fad_vocoder else GriffinLimVocoder().to(device)
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f'fad_vocoder={cfg.fad_vocoder}: {e}') from e

    @torch.no_grad()
    def encode(x):
        wav = vocoder(x).squeeze(1) if vocoder is not None else x.squeeze(-1)  # (B, T)
        return reader.get_feats_batched(wav).flatten(0, 1).cpu()
    return encode


def real_statistics(valid_ds, encode=None):
    """FAD reference statistics: mean and unbiased covariance of all frames of the uncropped validation items.

    With `encode` (see fad_encoder) of their HuBERT features instead: the items are padded to the longest one
    (log-mels at the front with silence, waveforms at the end with zeros) and encoded FAD_CHUNK at a time.
    """
    items = [valid_ds.load(i) for i in tqdm(range(len(valid_ds)), desc='validation statistics', unit='item')]
    if encode is None:
        return feature_statistics(torch.cat([x.reshape(x.shape[0], -1) for x in items]))
    n = max(x.shape[0] for x in items)
    if valid_ds.data_type == 'melspec':
        items = [F.pad(x, (0, 0, n - x.shape[0], 0), value=MEL_SILENCE) for x in items]  # (n, 128) each
    else:
        items = [F.pad(x, (0, n - x.shape[0]))[:, None] for x in items]  # (n, 1) each
    chunks = tqdm(range(0, len(items), FAD_CHUNK), desc='validation statistics (HuBERT)', unit='batch')
    return feature_statistics(torch.cat([encode(torch.stack(items[k:k + FAD_CHUNK])) for k in chunks]))


def grad_norm_figure(named_grads):
    """Bar chart of per-parameter gradient L2 norms (NaN where a parameter has no gradient)."""
    names = list(named_grads)
    norms = [named_grads[n] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.12), 4))
    ax.bar(range(len(names)), norms)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=4)
    ax.set_yscale('log')
    ax.set_ylabel('grad L2 norm')
    fig.tight_layout()
    return fig


def optimise(trainable, loss, name, steps, grad_norms=None):
    """Backward, clip and step one model; returns the pre-clip gradient norm (non-finite: update skipped).

    grad_norms: a dict that receives '{name}.{parameter}' -> unscaled gradient L2 norm, for the figure.
    """
    trainable.backward(loss)
    if grad_norms is not None:
        scale = trainable.scaler.get_scale() if trainable.scaler else 1.0
        grad_norms.update({f'{name}.{n}': p.grad.float().norm().item() / scale
                           for n, p in trainable.module.named_parameters() if p.grad is not None})
    norm = trainable.step()
    if not math.isfinite(norm):
        log.warning('step %d: non-finite %s gradient norm (%s); %s update skipped', steps, name, norm, name)
    return norm


def value_histogram_figure(approx_kl):
    """Histograms of all real and fake validation feature values (the ApproxKL bins)."""
    edges = approx_kl.edges[:-1].numpy()
    fig, ax = plt.subplots(figsize=(6, 3))
    for name, counts in (('real', approx_kl.real_counts), ('fake', approx_kl.fake_counts)):
        ax.step(edges, (counts / counts.sum().clamp_min(1)).numpy(), where='post', label=name)
    ax.set_xlabel('feature value (clamped to [-1.2, 1.2])')
    ax.legend()
    fig.tight_layout()
    return fig


def mel_figure(fake):
    """The first (up to) four generated log-mels (B, L, 128) as images."""
    n = min(4, fake.shape[0])
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3), squeeze=False)
    for ax, m in zip(axes[0], fake[:n].float().cpu()):
        ax.imshow(m.T.numpy(), origin='lower', aspect='auto')
    fig.tight_layout()
    return fig


@contextlib.contextmanager
def seeded(seed, device):
    """Run with python/numpy/torch generators seeded to `seed`, then put the previous states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        seed_all(seed)
        yield
    random.setstate(py_state), np.random.set_state(np_state)


@torch.no_grad()
def validate(cfg, g, d, loader, real_stats, writer, steps, device, norm, encode=None):
    """Reference note 33 on the training G (eval mode, fp32): losses, ApproxKL, nearest-neighbour metrics, FAD
    (on the frames, or on encode(fake) from fad_encoder). D sees features normalised with `norm` (a
    FeatureNorm), as in training; the metrics compare raw-scale features.

    Seeded with cfg.seed each time: every validation sees the same z and crops, and the training random
    streams are left as they were (so resuming is exact whatever the validation schedule).
    """
    with seeded(cfg.seed, device):
        loader.generator.manual_seed(cfg.seed)
        return _validate(cfg, g, d, loader, real_stats, writer, steps, device, norm, encode)


def _validate(cfg, g, d, loader, real_stats, writer, steps, device, norm, encode):
    g.eval(), d.eval()
    approx_kl, fakes, g_losses, d_losses, d_fakes, d_reals = ApproxKL(), [], [], [], [], []
    for j, (real, _, _, z) in enumerate(tqdm(loader, desc=f'validation @ {steps}', unit='batch', leave=False)):
        real, z = real.to(device), z.to(device)
        fake = g(z, cfg.rp_w_cfg.seq_len)
        d_fake, d_real = d(fake), d(norm.normalize(real))
        fake = norm.denormalize(fake)
        g_losses.append(generator_loss(d_fake).item())
        d_losses.append(discriminator_loss(d_real, d_fake).item())
        d_fakes.append(d_fake.flatten().cpu()), d_reals.append(d_real.flatten().cpu())
        approx_kl.accumulate(real, fake)
        fakes.append(encode(fake) if encode else fake.flatten(0, 1).cpu())
        if j > 0:
            continue
        real_f, fake_f = real.flatten(0, 1), fake.flatten(0, 1)
        if steps % (10 * cfg.validation_interval) == 0:
            n = min(EMBED_FRAMES, real_f.shape[0])
            writer.add_embedding(torch.cat([real_f[:n], fake_f[:n]]).cpu(), ['real'] * n + ['fake'] * n,
                                 global_step=steps, tag='validation/frames')
        fake_nearest, real_nearest = closest_dist_pair(real_f, fake_f, NEAREST_N, NEAREST_N)
        writer.add_scalars('validation/min_cosim_dists', {'c_fake_nearest_dist': fake_nearest.mean().item(),
                                                          'c_real_nearest_dist': real_nearest.mean().item()}, steps)
        writer.add_histogram('validation/c_fake_nearest_dists', fake_nearest, steps)
        writer.add_histogram('validation/c_real_nearest_dists', real_nearest, steps)
        fake_to_real, real_to_fake = perc_closest(real_f, fake_f, n=PERC_N)
        writer.add_scalar('validation/fake_closest_to_real_perc', fake_to_real, steps)
        writer.add_scalar('validation/real_closest_to_fake_perc', real_to_fake, steps)
        if cfg.data_type == 'melspec':
            writer.add_figure('mel/generated_mels', mel_figure(fake), steps)
    g.train(), d.train()
    fad_value = fad(torch.cat(fakes), *real_stats)
    writer.add_histogram('validation/D(G(z))', torch.cat(d_fakes), steps)
    writer.add_histogram('validation/D(c)', torch.cat(d_reals), steps)
    writer.add_scalar('validation/g_loss', float(np.mean(g_losses)), steps)
    writer.add_scalar('validation/d_loss', float(np.mean(d_losses)), steps)
    writer.add_scalar('validation/fad', fad_value, steps)
    writer.add_scalar('validation/approx_kl_div', approx_kl.compute(), steps)
    writer.add_figure('validation/c_val_hist', value_histogram_figure(approx_kl), steps)
    if device.type == 'cuda':
        writer.add_scalar('memory/max_allocated_gb', torch.cuda.max_memory_allocated(device) / 1e9, steps)
        writer.add_scalar('memory/max_reserved_gb', torch.cuda.max_memory_reserved(device) / 1e9, steps)
    return fad_value


def check_config(cfg):
    for key in MANDATORY:
        try:
            getattr(cfg, key)
        except MissingMandatoryValue:
            raise ConfigError(f"config key '{key}' is mandatory: add {key}=... to the command") from None
    if cfg.model != 'rp_w':
        raise ConfigError(f"model={cfg.model}: only model=rp_w is implemented (the reference default 'rv_w' "
                          "raises as well); add model=rp_w")
    for key in ('c_dim', 'z_dim'):
        if cfg[key] != cfg.rp_w_cfg[key]:
            raise ConfigError(f'{key}={cfg[key]} must equal rp_w_cfg.{key}={cfg.rp_w_cfg[key]}; set both')
    if cfg.fad_hubert_checkpoint and cfg.data_type == 'hubert_L6':
        raise ConfigError('fad_hubert_checkpoint is for data_type melspec or wav: hubert_L6 features are already '
                          'HuBERT features and their FAD uses them as they are; remove fad_hubert_checkpoint')
    if cfg.fad_vocoder and not (cfg.fad_hubert_checkpoint and cfg.data_type == 'melspec'):
        raise ConfigError('fad_vocoder is used only with data_type=melspec and fad_hubert_checkpoint set; set '
                          'fad_hubert_checkpoint or remove fad_vocoder')
    if cfg.batch_size % min(4, cfg.batch_size):
        raise ConfigError(f'batch_size={cfg.batch_size}: the discriminator groups samples in fours '
                          '(minibatch std); use a multiple of 4')


def main(argv):
    # ------------------------------------------------------------------ config
    argv = [a for a in argv if not a.startswith('--local_rank')]  # added by the deepspeed launcher
    if '--help' in argv or '-h' in argv:
        print(__doc__ + '\nDefault config (override any key with key=value):\n\n' + config_to_yaml(default_config()))
        return
    cfg = parse_config(argv)
    check_config(cfg)

    # ------------------------------------------------------------------ set-up
    rank, world_size = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=(f'[rank {rank}] ' if world_size > 1 else '') + '%(levelname)s %(message)s')
    train_ds, valid_ds = build_datasets(cfg)
    collate = Collate.from_config(cfg)
    engine = make_engine(cfg)
    device = engine.device
    seed_all(cfg.seed + engine.rank)  # rank 0 is seeded like the reference; other ranks draw their own z
    torch.backends.cudnn.benchmark = device.type == 'cuda'
    torch.set_flush_denormal(True)  # CPU: a fresh G's outputs (~1e-7) make subnormal floats in D, 10x slower

    sampler = DistributedSampler(train_ds, num_replicas=engine.world_size, rank=engine.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    loader_rng = torch.Generator()  # worker seeds per (epoch, rank), independent of the training RNG
    loader = DataLoader(train_ds, cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate,
                        drop_last=True, pin_memory=device.type == 'cuda', generator=loader_rng,
                        worker_init_fn=ignore_stop_signals)
    if len(loader) == 0:
        raise ConfigError(f'{len(train_ds)} training items give no full batch of batch_size={cfg.batch_size} '
                          f'per rank ({engine.world_size} ranks); lower batch_size or add data')

    run = open_run(cfg.checkpoint_path, cfg.resume_checkpoint, cfg.overwrite) if engine.is_main else None
    try:
        return train(cfg, engine, run, train_ds, valid_ds, collate, sampler, loader_rng, loader)
    finally:
        if run is not None:
            run.close()


def train(cfg, engine, run, train_ds, valid_ds, collate, sampler, loader_rng, loader):
    device = engine.device
    resume = engine.all_gather_object(str(run.resume) if run and run.resume else '')[0]  # rank 0 decides
    g, d = Generator(cfg.rp_w_cfg), Discriminator.from_config(cfg)
    g_ema = copy.deepcopy(g).eval().requires_grad_(False)
    state, steps, start_epoch, start_batch = None, 0, 0, 0
    if resume:
        state = ckpt.load(resume)
        try:
            g.load_state_dict(state['g_state_dict'])
            d.load_state_dict(state['d_state_dict'])
            g_ema.load_state_dict(state.get('g_ema_state_dict') or state['g_state_dict'])
        except RuntimeError as e:
            raise ckpt.CheckpointError(f'{resume}: weights do not fit the configured model; use '
                                       f'the rp_w_cfg of the run that wrote it ({e})') from e
        steps, start_epoch = state['steps'] + 1, max(0, state['epoch'])
    if state is not None and state.get('feature_norm'):  # the statistics the run started with
        norm = FeatureNorm.from_checkpoint(state)
    else:
        norm = FeatureNorm.fit(train_ds) if cfg.normalize_features else FeatureNorm()
    norm.to(device)
    g_opt, d_opt = build_optimizers(cfg, g, d)
    G, D = engine.wrap(g, g_opt), engine.wrap(d, d_opt)
    g_ema.to(device)
    noise_std = NOISE_STD[cfg.data_type] / norm.std if norm.enabled else NOISE_STD[cfg.data_type]  # on the raw scale
    aug = Augmenter(noise_std, cfg.aug_init_p, adapt=cfg.ada_adapt)
    phase, counter, d_update_perc, best_fad, smooth = 'D', 0, 1.0, math.inf, {}
    last = {}  # latest raw values for stdout and tensorboard
    resume_rng = None
    if state is not None:
        G.load_state_dict(state['g_optim_state_dict'], state.get('g_scaler_state_dict'))
        D.load_state_dict(state['d_optim_state_dict'], state.get('d_scaler_state_dict'))
        if 'train_state' in state:  # written by this script: continue exactly where it stopped
            ts = state['train_state']
            phase, counter, start_batch = ts['phase'], ts['counter'], ts['batch_index']
            d_update_perc, best_fad, smooth = ts['d_update_perc'], ts['best_fad'], dict(ts['smoothed'])
            last.update(ts['latest'])
            aug.load_state_dict(state['ada_state'])
            if engine.rank < len(state['rng_state']):  # one entry per rank of the run that wrote it
                resume_rng = state['rng_state'][engine.rank]
            else:  # more ranks than that run: fresh streams, distinct from those this rank drew before
                seed_all(cfg.seed + engine.rank + steps * engine.world_size)
        else:
            log.warning('%s has no resume state (reference checkpoint): ADA restarts at p=%g and epoch %d '
                        'is replayed from its start', resume, cfg.aug_init_p, start_epoch)
        log.info('resumed from %s at step %d, epoch %d, batch %d', resume, steps, start_epoch, start_batch)
    del state

    writer, valid_loader, real_stats, encode = None, None, None, None
    if engine.is_main:
        encode = fad_encoder(cfg, device)  # before the logs: a bad path fails without leaving a run folder behind
        writer = SummaryWriter(str(Path(cfg.checkpoint_path) / 'logs'))
        writer.add_text('config', '```\n' + config_to_yaml(cfg) + '\n```')
        valid_loader = DataLoader(valid_ds, cfg.batch_size, shuffle=False, drop_last=True, collate_fn=collate,
                                  num_workers=cfg.num_workers, generator=torch.Generator(),
                                  worker_init_fn=ignore_stop_signals)
        if len(valid_loader):
            real_stats = real_statistics(valid_ds, encode)
        else:
            log.warning('%d validation items make no full batch of %d: validation is off', len(valid_ds),
                        cfg.batch_size)
    log.info('engine=%s precision=%s device=%s world_size=%d; G %d params, D %d params; %d batches per epoch',
             cfg.engine, engine.precision, device, engine.world_size, sum(p.numel() for p in g.parameters()),
             sum(p.numel() for p in d.parameters()), len(loader))

    stop_signal, previous_handlers = catch_stop_signals()
    ema_every = cfg.ema_every or cfg.checkpoint_interval
    nonfinite, last_finite_ckpt = 0, None
    done, saved = None, None  # (step, epoch, next batch) of the last finished step; the last periodic checkpoint

    def checkpoint_state(steps, epoch, batch_index, rng_states):
        """The checkpoint dict after step `steps` (density/checkpoint.py)."""
        g_optim, g_scaler = G.state_dict()
        d_optim, d_scaler = D.state_dict()
        return {
            'g_state_dict': cpu_state(G.module), 'd_state_dict': cpu_state(D.module),
            'g_optim_state_dict': g_optim, 'd_optim_state_dict': d_optim,
            'g_ema_state_dict': cpu_state(g_ema),
            'g_scaler_state_dict': g_scaler, 'd_scaler_state_dict': d_scaler,
            'steps': steps, 'epoch': epoch, 'cfg_yaml': config_to_yaml(cfg),
            'train_state': {'phase': phase, 'counter': counter, 'batch_index': batch_index,
                            'd_update_perc': d_update_perc, 'best_fad': best_fad, 'smoothed': smooth,
                            'latest': {k: float(last[k]) for k in ('g_loss', 'd_loss', 'r1') if k in last}},
            'ada_state': aug.state_dict(), 'rng_state': rng_states, 'run_id': run.run_id,
            'feature_norm': norm.to_checkpoint()}
    stdout_clock, summary_clock = [time.perf_counter(), steps], [time.perf_counter(), steps]

    # ------------------------------------------------------------------ training loop
    batches = None
    try:
        for epoch in range(start_epoch, cfg.n_epochs):
            sampler.set_epoch(epoch)
            loader_rng.manual_seed(cfg.seed + epoch * engine.world_size + engine.rank)
            batches = iter(loader)
            first = start_batch if epoch == start_epoch else 0
            for _ in range(first):  # replay the data position of a resumed epoch ...
                next(batches)
            if resume_rng is not None:  # ... then the generators, so the next batch is drawn exactly as before
                ckpt.set_rng_state(resume_rng)
                resume_rng = None
            pbar = tqdm(total=len(loader), initial=first, desc=f'epoch {epoch}', unit='batch',
                        disable=not engine.is_main)
            for i, (real, _, _, z) in enumerate(batches, start=first):
                done = None  # this step is under way
                real, z = norm.normalize(real.to(device, non_blocking=True)), z.to(device, non_blocking=True)
                skip = torch.tensor([float(random.random() < aug.p)])
                if engine.world_size > 1:  # every rank follows rank 0's draw
                    skip = engine.all_sum((skip * engine.is_main).to(device))
                if phase == 'D' and skip.item() and steps % NEVER_SKIP_EVERY != 0:
                    phase = 'G'

                grad_norms = {} if engine.is_main and steps % cfg.grad_summary_interval == 0 else None
                if phase == 'D':
                    r1_step = steps > 0 and steps % cfg.rp_w_cfg.apply_r1_every == 0
                    D.zero_grad()
                    loss_d, r1, d_real, d_fake = d_forward(cfg, engine, G, D, aug, real, z, r1_step)
                    total = loss_d + r1
                    l_d, l_total = mean_over_ranks(engine, loss_d, total)
                    take = (i % cfg.update_ratio == 0 or l_d > cfg.d_loss_update_max_threshold) \
                        and l_d > cfg.d_loss_update_min_threshold
                    finite, stepped = math.isfinite(l_total), False
                    if not finite:
                        log.warning('step %d: non-finite %s (%s); D update skipped', steps,
                                    'D loss' if not math.isfinite(l_d) else 'R1 penalty', l_total)
                    elif take:
                        last['d_grad_norm'] = optimise(D, total, 'D', steps, grad_norms)
                        finite = stepped = math.isfinite(last['d_grad_norm'])
                    d_update_perc += D_UPDATE_RATE * (float(stepped) - d_update_perc)
                    if cfg.data_type != 'wav' and math.isfinite(l_d):  # a NaN D(real) would void p's update
                        aug.accumulate(d_real, engine.all_sum)
                    last.update(d_loss=l_d, r1=r1.detach(), total_d=l_total, d_fake=d_fake.detach().float().mean(),
                                d_real=d_real.detach().float().mean())
                    next_phase = 'G'
                else:
                    G.zero_grad()
                    d_update_perc += D_UPDATE_RATE * (0 - d_update_perc)
                    loss_g, d_fake, real, fake = g_forward(cfg, engine, G, D, aug, real, z)
                    with torch.no_grad():
                        mean_drift, var_drift = drift(real, fake)
                        dist_loss = distance_heuristic(real, fake)
                    (l_g,) = mean_over_ranks(engine, loss_g)
                    finite = math.isfinite(l_g)
                    if not finite:
                        log.warning('step %d: non-finite G loss (%s); G update skipped', steps, l_g)
                    else:
                        last['g_grad_norm'] = optimise(G, loss_g, 'G', steps, grad_norms)
                        finite = math.isfinite(last['g_grad_norm'])
                    last.update(g_loss=l_g, mean_drift=mean_drift, var_drift=var_drift, dist_loss=dist_loss,
                                d_fake=d_fake.detach().float().mean())
                    next_phase = 'D'
                counter += 1
                if counter >= cfg.update_ratio:
                    counter, phase = 0, next_phase
                nonfinite = 0 if finite else nonfinite + 1
                if nonfinite >= cfg.max_nonfinite_steps:
                    raise TrainingAborted(
                        f'{nonfinite} consecutive non-finite steps up to step {steps}: training aborted. Last '
                        f'checkpoint written before them: {last_finite_ckpt or "none"} (resume from it with '
                        'overwrite=true, which deletes the newer ones, and a lower lr or grad_clip)')

                # -------------------------------------------------------------- bookkeeping
                pbar.update(1)
                save_best = False
                if engine.is_main and steps > LOG_AFTER:
                    for key in ('g_loss', 'd_loss'):
                        if key in last and math.isfinite(last[key]):
                            smooth[key] = smoothed(smooth.get(key), last[key], LOSS_SMOOTHING)
                    if float(last.get('r1', 0.0)) > R1_LOG_MIN:
                        smooth['r1'] = smoothed(smooth.get('r1'), float(last['r1']), R1_SMOOTHING)
                    if steps % cfg.stdout_interval == 0:
                        mem = torch.cuda.max_memory_reserved(device) / 1e9 if device.type == 'cuda' else 0.0
                        tqdm.write(f"Steps: {steps}, g_loss: {last.get('g_loss', math.nan):.3f}, d_loss: "
                                   f"{last.get('d_loss', math.nan):.3f}, dmetric: 0.000, "
                                   f"s/b: {seconds_per_batch(stdout_clock, steps):.3f}, mem: {mem:.2f} GB")
                        pbar.set_postfix(p=f'{aug.p:.3f}')
                    if steps % cfg.summary_interval == 0:
                        scalars = {
                            'memory/sec_per_batch': seconds_per_batch(summary_clock, steps),
                            'training/g_loss_smooth': smooth.get('g_loss'),
                            'training/d_loss_smooth': smooth.get('d_loss'),
                            'opt/g_lr': G.optimizer.param_groups[0]['lr'],
                            'opt/g_W_lr': G.optimizer.param_groups[1]['lr'],
                            'opt/d_lr': D.optimizer.param_groups[0]['lr'],
                            'opt/g_grad_norm': last.get('g_grad_norm'), 'opt/d_grad_norm': last.get('d_grad_norm'),
                            'training/mean_drift': last.get('mean_drift'), 'training/var_drift': last.get('var_drift'),
                            'training/dist_loss': last.get('dist_loss'), 'training/r1_loss': smooth.get('r1'),
                            'training/total_d_loss': last.get('total_d'), 'opt/d_update_perc': d_update_perc,
                            'training/D(G(z))': last.get('d_fake'), 'training/D(c)': last.get('d_real'),
                            'data/ada_p': aug.p, 'data/r_t': aug.r_t}
                        for tag, value in scalars.items():
                            if value is not None:
                                writer.add_scalar(tag, float(value), steps)
                    if steps % cfg.grad_summary_interval == 0 and grad_norms:
                        names = [f'G.{n}' for n, _ in G.module.named_parameters()] + \
                            [f'D.{n}' for n, _ in D.module.named_parameters()]
                        writer.add_figure('opt/grad_norms', grad_norm_figure(
                            {n: grad_norms.get(n, math.nan) for n in names}), steps)
                if engine.is_main and steps > 0 and steps % ema_every == 0:
                    update_ema(g_ema, G.module, cfg.rp_w_cfg.g_ema_weight)
                if engine.is_main and real_stats is not None and steps > 0 and steps % cfg.validation_interval == 0:
                    fad_value = validate(cfg, G.module, D.module, valid_loader, real_stats, writer, steps, device,
                                         norm, encode)
                    log.info('step %d: validation FAD %.4f (best %.4f)', steps, fad_value, best_fad)
                    if fad_value < best_fad:
                        best_fad, save_best = fad_value, True

                flags = torch.tensor([float(bool(stop_signal)), float(save_best)])
                if engine.world_size > 1:  # every rank stops alike and joins the RNG-state gather below
                    flags = engine.all_sum(flags.to(device))
                stop, save_best = (bool(v) for v in flags.tolist())
                final = stop or (cfg.max_steps and steps + 1 >= cfg.max_steps) or \
                    (epoch == cfg.n_epochs - 1 and i == len(loader) - 1)
                periodic = steps > 0 and steps % cfg.checkpoint_interval == 0
                write = periodic or final or save_best
                rng_states = engine.all_gather_object(ckpt.rng_state()) if write else None  # per rank, to resume
                if engine.is_main and write:
                    state = checkpoint_state(steps, epoch, i + 1, rng_states)
                    if periodic or final:
                        path = ckpt.periodic_path(cfg.checkpoint_path, steps)
                        ckpt.save(state, path)
                        saved = steps
                        # during a non-finite streak nothing is pruned: keep the checkpoint an abort names
                        run.prune(cfg.keep_last_checkpoints if nonfinite == 0 else 0, path)
                        log.info('step %d: saved %s', steps, path)
                    if save_best:
                        ckpt.save(state, Path(cfg.checkpoint_path) / 'ckpt_best_fad.pt')
                    del state
                if (periodic or final) and nonfinite == 0:
                    last_finite_ckpt = ckpt.periodic_path(cfg.checkpoint_path, steps)
                done = steps, epoch, i + 1
                steps += 1
                if final:
                    pbar.close()
                    if stop:
                        log.warning('stopped by signal after step %d; resume with resume_checkpoint=%s', steps - 1,
                                    ckpt.periodic_path(cfg.checkpoint_path, steps - 1))
                    return
            pbar.close()
    except DatasetError as e:  # a bad file met mid-run: keep the steps since the last checkpoint, then stop
        message = str(e).strip().splitlines()[-1].split('DatasetError: ', 1)[-1]  # a worker's error is a traceback
        if engine.world_size == 1 and done is not None and done[0] != saved:
            path = ckpt.periodic_path(cfg.checkpoint_path, done[0])
            ckpt.save(checkpoint_state(*done, [ckpt.rng_state()]), path)
            run.prune(0, path)
            message += f'; checkpoint written: {path}'
        raise DatasetError(f'{message} (fix or delete that file, then resume with resume_checkpoint=auto)') from e
    finally:
        stop_workers(batches)  # now, not at interpreter exit, where a live worker could block it forever
        restore_signals(previous_handlers)
        if writer is not None:
            writer.close()
        engine.close()


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (ConfigError, DatasetError, EngineError, ckpt.CheckpointError, TrainingAborted, RunError, WriteError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
