"""Train a vocoder (HiFi-GAN or the iSTFT/Vocos-style one of density/vocoder.py) on (feature, waveform) pairs.

    python train_vocoder.py vocoder=hifigan_mel_small train_csv=<splits>/sc09-train.csv \\
        valid_csv=<splits>/sc09-valid.csv feature_root=<features> checkpoint_path=runs/vocoder [key=value ...]
    python train_vocoder.py vocoder=hifigan_hubert feature_root=data/sc09_hubert ...    (HuBERT layer-6 features)
    torchrun --nproc_per_node 4 train_vocoder.py ...                  (DDP, engine=torch; gloo on CPUs)
    deepspeed --num_gpus 4 train_vocoder.py engine=deepspeed ...      (DeepSpeed)
    python train_vocoder.py --help                                    (all keys and defaults)

`vocoder` names a config of density.vocoder.VOCODER_CONFIGS (hifigan_hubert, hifigan_mel, hifigan_mel_small,
istft_hubert, istft_mel); `vocoder_config.<field>=...` changes one of its fields. Data: the clips of the split
CSVs (split_data.py) and their features in the cache of hubert_feature_reader.py (`feature_root`, the folder
train_asgan.py reads); log-mels may instead be computed from the wavs (feature_root empty). Features are raw,
not normalised (an ASGAN run with normalize_features de-normalises before its vocoder).

The recipe is HiFi-GAN's (density/vocoder_training.py): random segments of `segment_frames` frames cut at the
same place in the features and the audio; multi-period and multi-scale discriminators; least-squares adversarial
loss, feature matching (x fm_weight) and L1 between log-mels (x mel_weight); AdamW (lr, betas, weight_decay)
with the learning rate multiplied by lr_decay once per epoch (or every lr_decay_every steps). The first
adv_start_step steps train the generator on the log-mel loss alone (no discriminator: Vocos' pretraining;
0 = adversarial from the start, as HiFi-GAN).

Writes to checkpoint_path: ckpt_XXXXXXXX.pt (periodic and final: G, D, optimisers, schedulers, loss scalers, RNG
states per rank, step and data position, to resume exactly with resume_checkpoint=auto or a file; the run-folder
rules of train_asgan.py apply, see density/run.py), vocoder_best.pt (the generator with the lowest validation
log-mel L1) and vocoder.pt (the final generator), both in the format of density.vocoder.save_vocoder that
generate.py --vocoder, evaluate.py --vocoder and hubconf.asgan_from_checkpoint(vocoder=...) load, and logs/
(tensorboard: losses, learning rate, gradient norms; validation log-mel L1 and multi-resolution STFT distance on
n_valid clips spread over valid_csv, audio and spectrograms of audio_samples of them). Ctrl-C / SIGTERM finish
the step, write a checkpoint and exit 0. A user error ends with one `error: ...` line and status 2 (--debug shows
its traceback).
"""

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from density.audio.plots import spectrogram_figure
from density.audio.signal import N_MELS, SAMPLE_RATE, check_audio_files, log_mel
from density.config import (
    BETAS,
    SEED,
    ConfigError,
    DistributedConfig,
    Range,
    above,
    at_least,
    check_ranges,
    parse_overrides,
    require_keys,
)
from density.data.splits import read_split_csv
from density.runtime import checkpoint as ckpt
from density.runtime import cli
from density.runtime.engine import make_engine, mean_over_ranks, optimise
from density.runtime.run import Harness, ignore_stop_signals, seed_all
from density.vocoders import training as vt
from density.vocoders.vocoder import VOCODER_CONFIGS, build_vocoder, save_vocoder, vocoder_config

log = logging.getLogger("train_vocoder")

BEST, FINAL = "vocoder_best.pt", "vocoder.pt"
RESUME_KEYS = (
    "g_state_dict",
    "d_state_dict",
    "g_optim_state_dict",
    "d_optim_state_dict",
    "g_sched_state_dict",
    "d_sched_state_dict",
    "steps",
    "epoch",
    "batch_index",
    "best",
    "rng_state",
    "cfg_yaml",
    "vocoder",
)
VALID_BATCH = 16


@dataclass
class VocoderTrainConfig:
    train_csv: str = MISSING  # split_data.py CSVs (column path)
    valid_csv: str = MISSING
    checkpoint_path: str = MISSING  # run folder
    feature_root: str = ""  # feature cache of hubert_feature_reader.py; '' = log-mels computed from the wavs
    vocoder: str = "hifigan_mel_small"  # a name of density.vocoder.VOCODER_CONFIGS
    vocoder_config: dict[str, Any] = field(default_factory=dict)  # fields of that config to change
    d_width: float = 1.0  # channel multiplier of the discriminators (1: HiFi-GAN's; 0.125-0.25 for a CPU)
    segment_frames: int = 32  # frames per training segment (x hop samples: 5120 for log-mels, 10240 for HuBERT)
    batch_size: int = 16  # per rank
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 0.01  # AdamW
    lr_decay: float = 0.999  # learning-rate factor, once per epoch (HiFi-GAN) or every lr_decay_every steps
    lr_decay_every: int = 0  # steps; 0 = once per epoch
    mel_weight: float = vt.MEL_WEIGHT
    fm_weight: float = vt.FM_WEIGHT
    adv_start_step: int = 0  # generator steps on the log-mel loss alone before the discriminators start
    max_steps: int = 1_000_000
    grad_clip: float = 0.0  # 0: no clipping (HiFi-GAN); the gradient norm is measured either way
    fp16: bool = False  # CUDA autocast + loss scaling
    bf16: bool = False  # bfloat16 autocast (takes precedence over fp16)
    engine: str = "torch"  # 'torch' (one process, or DDP under torchrun) or 'deepspeed'
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    seed: int = 0
    num_workers: int = 0  # DataLoader workers reading clips
    num_threads: int = 0  # torch CPU threads (0: torch's default)
    resume_checkpoint: str = ""  # '': new run; 'auto': newest checkpoint in checkpoint_path; or a ckpt_XXXXXXXX.pt
    overwrite: bool = False  # let a new run delete the checkpoints of another run in checkpoint_path
    keep_last_checkpoints: int = 2  # newest periodic checkpoints kept (0: all)
    max_nonfinite_steps: int = 20  # abort after this many consecutive non-finite steps (0: never)
    resample: bool = False  # resample clips that are not at 16 kHz (else an error)
    checkpoint_interval: int = 5000  # steps; a final checkpoint is always written
    validation_interval: int = 1000  # steps; validation also runs at the last step
    summary_interval: int = 100  # steps between tensorboard training scalars
    n_valid: int = 64  # validation clips (evenly spaced over valid_csv, whole 1-s clips)
    audio_samples: int = 4  # of them with audio and spectrograms in tensorboard


RANGES = {  # checked by parse_config: `error: key=value: must be <range>`
    **dict.fromkeys(
        ("segment_frames", "batch_size", "max_steps", "n_valid", "checkpoint_interval", "validation_interval"),
        at_least(1),
    ),
    "summary_interval": at_least(1),
    **dict.fromkeys(
        ("lr_decay_every", "adv_start_step", "num_workers", "num_threads", "audio_samples", "keep_last_checkpoints"),
        at_least(0),
    ),
    **dict.fromkeys(("max_nonfinite_steps", "weight_decay", "grad_clip", "mel_weight", "fm_weight"), at_least(0)),
    "lr": above(0),
    "d_width": Range(lambda v: 0 < v <= 4, "in (0, 4]"),
    "lr_decay": Range(lambda v: 0 < v <= 1, "in (0, 1]"),
    "seed": SEED,
    "betas": BETAS,
}


def parse_config(argv):
    """Overrides onto VocoderTrainConfig -> (cfg, vocoder format, vocoder config dataclass); ConfigError else."""
    fields = [a for a in argv if a.startswith("vocoder_config.")]  # free-form: checked against the vocoder's config
    cfg = parse_overrides(
        OmegaConf.structured(VocoderTrainConfig), [a for a in argv if a not in fields], "train_vocoder.py"
    )
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(fields))
    except (OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"cannot read {fields}: {e}") from None
    require_keys(cfg, ("train_csv", "valid_csv", "checkpoint_path"))
    if cfg.vocoder not in VOCODER_CONFIGS:
        raise ConfigError(f"vocoder={cfg.vocoder}: choose one of {sorted(VOCODER_CONFIGS)}")
    fmt, config = vocoder_config(cfg.vocoder)
    try:
        config = dataclasses.replace(config, **OmegaConf.to_container(cfg.vocoder_config))
    except TypeError as e:
        raise ConfigError(
            f"vocoder_config: {e} (fields of {type(config).__name__}: {[f.name for f in dataclasses.fields(config)]})"
        ) from None
    check_ranges(cfg, RANGES)
    data_type = "melspec" if config.in_dim == N_MELS else "hubert_L6"
    if data_type != "melspec" and not cfg.feature_root:
        raise ConfigError(
            f"vocoder={cfg.vocoder} takes {config.in_dim}-d features: set feature_root=<feature cache "
            "of hubert_feature_reader.py>"
        )
    return cfg, fmt, config


def make_datasets(cfg, config, seed):
    """(train segments, validation clips) of the split CSVs; every audio file and cached feature file checked."""
    data_type = "melspec" if config.in_dim == N_MELS else "hubert_L6"
    common = dict(
        data_type=data_type,
        hop=config.hop,
        in_dim=config.in_dim,
        feature_root=cfg.feature_root or None,
        resample=cfg.resample,
    )
    train_paths, _ = read_split_csv(cfg.train_csv)
    valid_paths, _ = read_split_csv(cfg.valid_csv)
    valid_paths = vt.spaced(valid_paths, cfg.n_valid)
    check_audio_files(
        tqdm(train_paths + valid_paths, desc="checking clips", unit="file", leave=False), resample=cfg.resample
    )
    train = vt.VocoderClips(train_paths, segment_frames=cfg.segment_frames, seed=seed, **common)
    valid = vt.VocoderClips(valid_paths, segment_frames=vt.full_clip_frames(config.hop), random_crop=False, **common)
    return train, valid


def main(argv):
    # ------------------------------------------------------------------ config
    argv = [a for a in argv if not a.startswith("--local_rank")]  # added by the deepspeed launcher
    if "--help" in argv or "-h" in argv:
        print(
            __doc__
            + "\nDefault config (override any key with key=value):\n\n"
            + OmegaConf.to_yaml(OmegaConf.structured(VocoderTrainConfig))
        )
        return None
    cfg, fmt, config = parse_config(argv)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=(f"[rank {rank}] " if world_size > 1 else "") + "%(levelname)s %(message)s",
    )
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    # ------------------------------------------------------------------ data and engine
    train_ds, valid_ds = make_datasets(cfg, config, cfg.seed)
    engine = make_engine(cfg)
    sampler = DistributedSampler(
        train_ds, num_replicas=engine.world_size, rank=engine.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // cfg.batch_size
    if steps_per_epoch == 0:
        engine.close()
        raise ConfigError(
            f"{len(train_ds)} training clips give no full batch of batch_size={cfg.batch_size} per "
            f"rank ({engine.world_size} ranks); lower batch_size or add data"
        )
    with Harness(
        cfg.checkpoint_path,
        cfg.resume_checkpoint,
        cfg.overwrite,
        main=engine.is_main,
        keep_last=cfg.keep_last_checkpoints,
        max_nonfinite=cfg.max_nonfinite_steps,
    ) as harness:
        try:
            return train(cfg, fmt, config, engine, harness, sampler, train_ds, valid_ds, steps_per_epoch)
        finally:
            engine.close()


def train(cfg, fmt, config, engine, harness, sampler, train_ds, valid_ds, steps_per_epoch):
    device, folder = engine.device, Path(cfg.checkpoint_path)
    # ------------------------------------------------------------------ models, optimisers, resume
    resume = engine.all_gather_object(str(harness.run.resume or "") if harness.run else "")[0]  # rank 0 decides
    seed_all(cfg.seed)  # every rank builds the same initial weights
    g, d = build_vocoder(fmt, config), vt.Discriminators(cfg.d_width)
    identity = {"name": cfg.vocoder, "format": fmt, "config": dataclasses.asdict(config), "d_width": cfg.d_width}
    state = ckpt.load(resume, RESUME_KEYS, "a train_vocoder.py checkpoint") if resume else None
    if state is not None:
        if state["vocoder"] != identity:
            raise ckpt.CheckpointError(
                f"{resume}: written for the vocoder {state['vocoder']}, but this run trains "
                f"{identity}; use the settings of the run that wrote it"
            )
        g.load_state_dict(state["g_state_dict"])
        d.load_state_dict(state["d_state_dict"])
    G, D = (
        engine.wrap(m, torch.optim.AdamW(m.parameters(), cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay))
        for m in (g, d)
    )
    g_sched, d_sched = (torch.optim.lr_scheduler.ExponentialLR(t.optimizer, cfg.lr_decay) for t in (G, D))
    steps, epoch, first, best, seconds, cpu_seconds, rng = 0, 0, 0, {"mel_l1": math.inf}, 0.0, 0.0, None
    if state is not None:
        G.load_state_dict(state["g_optim_state_dict"], state.get("g_scaler_state_dict"))
        D.load_state_dict(state["d_optim_state_dict"], state.get("d_scaler_state_dict"))
        g_sched.load_state_dict(state["g_sched_state_dict"])
        d_sched.load_state_dict(state["d_sched_state_dict"])
        steps, epoch, first, best = state["steps"] + 1, state["epoch"], state["batch_index"], state["best"]
        seconds, cpu_seconds = state.get("train_seconds", 0.0), state.get("train_cpu_seconds", 0.0)
        if engine.rank < len(state["rng_state"]):
            rng = state["rng_state"][engine.rank]
        else:  # a rank the writing run did not have
            seed_all(cfg.seed + engine.rank + steps * engine.world_size)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume, steps, epoch, first)
    else:
        seed_all(cfg.seed + engine.rank)
    if first >= steps_per_epoch:
        epoch, first = epoch + 1, 0
    log.info(
        "%s (%s, hop %d): G %d params, D %d params (d_width %g); %d train clips, %d validation clips, "
        "%d steps per epoch per rank; engine=%s precision=%s device=%s world_size=%d",
        cfg.vocoder,
        fmt,
        config.hop,
        sum(p.numel() for p in g.parameters()),
        sum(p.numel() for p in d.parameters()),
        cfg.d_width,
        len(train_ds),
        len(valid_ds),
        steps_per_epoch,
        cfg.engine,
        engine.precision,
        device,
        engine.world_size,
    )

    def checkpoint(rng_states):
        (g_optim, g_scaler), (d_optim, d_scaler) = G.state_dict(), D.state_dict()
        return {
            "g_state_dict": ckpt.cpu_state(g),
            "d_state_dict": ckpt.cpu_state(d),
            "g_optim_state_dict": g_optim,
            "d_optim_state_dict": d_optim,
            "g_scaler_state_dict": g_scaler,
            "d_scaler_state_dict": d_scaler,
            "g_sched_state_dict": g_sched.state_dict(),
            "d_sched_state_dict": d_sched.state_dict(),
            "steps": steps,
            "epoch": epoch,
            "batch_index": i + 1,
            "best": best,
            "rng_state": rng_states,
            "train_seconds": seconds + time.perf_counter() - t0,
            "train_cpu_seconds": cpu_seconds + time.process_time() - c0,
            "cfg_yaml": OmegaConf.to_yaml(cfg),
            "vocoder": identity,
            "run_id": harness.run.run_id if harness.run else None,
        }

    writer = SummaryWriter(str(folder / "logs")) if engine.is_main else None
    if writer is not None:
        writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
    t0, c0, clock = time.perf_counter(), time.process_time(), [time.perf_counter(), steps]
    stop, final = False, steps >= cfg.max_steps
    # ------------------------------------------------------------------ training loop
    try:
        with harness.stop_signals():
            while not final:
                sampler.set_epoch(epoch)
                train_ds.set_epoch(epoch)
                order = list(sampler)
                batches = [order[k * cfg.batch_size : (k + 1) * cfg.batch_size] for k in range(steps_per_epoch)]
                loader = DataLoader(
                    train_ds,
                    batch_sampler=batches[first:],
                    num_workers=cfg.num_workers,
                    pin_memory=device.type == "cuda",
                    worker_init_fn=ignore_stop_signals,
                    generator=torch.Generator(),
                )
                if rng is not None:
                    ckpt.set_rng_state(rng)
                    rng = None
                pbar = tqdm(
                    total=steps_per_epoch,
                    initial=first,
                    desc=f"epoch {epoch}",
                    unit="batch",
                    disable=not engine.is_main,
                )
                for i, (feats, wav) in enumerate(loader, start=first):
                    feats, real = feats.to(device, non_blocking=True), wav.to(device, non_blocking=True).unsqueeze(1)
                    adversarial = steps >= cfg.adv_start_step
                    # -------------------------------------------- generator forward
                    with engine.autocast():
                        fake = G(feats)
                    fake = fake.float()
                    # -------------------------------------------- discriminator step
                    loss_d, d_norm = torch.zeros((), device=device), 0.0
                    if adversarial:
                        D.zero_grad()
                        with engine.autocast():
                            logits, _ = D(torch.cat([real, fake.detach()]))
                        loss_d = vt.discriminator_loss(*zip(*(x.chunk(2) for x in logits)))
                        (l_d,) = mean_over_ranks(engine, loss_d)
                        d_norm = optimise(D, loss_d, "D", steps) if math.isfinite(l_d) else math.nan
                    # -------------------------------------------- generator step
                    G.zero_grad()
                    loss_mel = vt.log_mel_l1(fake, real)
                    loss_adv, loss_fm = torch.zeros((), device=device), torch.zeros((), device=device)
                    if adversarial:
                        D.module.requires_grad_(False)  # no gradients for D, and DDP's D is not involved
                        with engine.autocast():
                            logits, fmaps = D.module(torch.cat([real, fake]))
                        D.module.requires_grad_(True)
                        loss_adv = vt.generator_adv_loss([x.chunk(2)[1] for x in logits])
                        loss_fm = vt.feature_matching_loss(
                            [[m.chunk(2)[0] for m in f] for f in fmaps], [[m.chunk(2)[1] for m in f] for f in fmaps]
                        )
                    loss_g = loss_adv + cfg.fm_weight * loss_fm + cfg.mel_weight * loss_mel
                    l_g, l_mel, l_adv, l_fm, l_d = mean_over_ranks(engine, loss_g, loss_mel, loss_adv, loss_fm, loss_d)
                    g_norm = optimise(G, loss_g, "G", steps) if math.isfinite(l_g) else math.nan
                    # -------------------------------------------- non-finite guard, learning-rate decay
                    finite = math.isfinite(g_norm) and (not adversarial or math.isfinite(d_norm))
                    if not finite:
                        log.warning(
                            "step %d: non-finite loss or gradient (G %s, D %s); update skipped", steps, l_g, l_d
                        )
                    harness.check_finite(finite, steps)
                    if (cfg.lr_decay_every and (steps + 1) % cfg.lr_decay_every == 0) or (
                        not cfg.lr_decay_every and i + 1 == steps_per_epoch
                    ):
                        g_sched.step()
                        d_sched.step()
                    pbar.update(1)
                    # -------------------------------------------- logging and validation (main rank)
                    final = steps + 1 >= cfg.max_steps
                    if engine.is_main and steps % cfg.summary_interval == 0:
                        now = time.perf_counter()
                        scalars = {
                            "train/g_loss": l_g,
                            "train/mel_l1": l_mel,
                            "train/g_adv": l_adv,
                            "train/feature_matching": l_fm,
                            "train/d_loss": l_d,
                            "opt/g_grad_norm": g_norm,
                            "opt/d_grad_norm": d_norm,
                            "opt/lr": G.optimizer.param_groups[0]["lr"],
                            "time/sec_per_step": (now - clock[0]) / max(1, steps - clock[1]),
                        }
                        clock[:] = now, steps
                        for tag, value in scalars.items():
                            writer.add_scalar(tag, value, steps)
                        pbar.set_postfix(mel=f"{l_mel:.3f}", d=f"{l_d:.3f}", adv=f"{l_adv:.3f}")
                    if engine.is_main and (steps % cfg.validation_interval == 0 or final or harness.stop_requested):
                        scores = validate(g, valid_ds, device, writer, steps, cfg.audio_samples)
                        tqdm.write(
                            f"step {steps}: validation log-mel L1 {scores['mel_l1']:.4f}, MR-STFT "
                            f"{scores['mr_stft']:.4f}"
                        )
                        if scores["mel_l1"] < best["mel_l1"]:
                            best = dict(scores, steps=steps)
                            save_vocoder(g, folder / BEST)
                    # -------------------------------------------- checkpoints and stopping
                    stop_flag = torch.tensor([float(harness.stop_requested)], device=device)
                    stop = bool(engine.all_sum(stop_flag).item())  # every rank stops at the same step
                    final = final or stop
                    if (steps > 0 and steps % cfg.checkpoint_interval == 0) or final:
                        rng_states = engine.all_gather_object(ckpt.rng_state())
                        path = harness.save_periodic(checkpoint(rng_states) if engine.is_main else None, steps)
                        log.info("step %d: saved %s", steps, path)
                    if final:
                        break
                    steps += 1
                pbar.close()
                epoch, first = epoch + 1, 0
    finally:
        if writer is not None:
            writer.close()
    if engine.is_main:
        save_vocoder(g, folder / FINAL)
    if stop:
        log.warning("stopped by signal after step %d; resume with resume_checkpoint=auto", steps)
        return None
    log.info(
        "done: %d steps; best validation log-mel L1 %.4f at step %s; %s and %s in %s",
        steps + 1,
        best["mel_l1"],
        best.get("steps"),
        BEST,
        FINAL,
        folder,
    )
    return best


@torch.no_grad()
def validate(g, valid_ds, device, writer, step, audio_samples):
    """Log-mel L1 and multi-resolution STFT distance of the generator on whole validation clips (tensorboard
    scalars, plus audio and spectrograms of the first audio_samples) -> {'mel_l1', 'mr_stft'}."""
    was_training = g.training
    g.eval()
    totals, n, shown = {"mel_l1": 0.0, "mr_stft": 0.0}, 0, []
    for feats, real in DataLoader(valid_ds, VALID_BATCH, generator=torch.Generator()):  # leaves the RNG alone
        fake = vt.vocode(g, feats.to(device), real.shape[-1]).cpu()
        totals["mel_l1"] += vt.log_mel_l1(fake, real, reduce=False).sum().item()
        totals["mr_stft"] += vt.mr_stft_distance(fake, real)["mr_stft"].sum().item()
        n += len(real)
        shown += list(zip(real, fake))[: audio_samples - len(shown)]
    g.train(was_training)
    scores = {k: v / n for k, v in totals.items()}
    for k, v in scores.items():
        writer.add_scalar(f"valid/{k}", v, step)
    for k, (real, fake) in enumerate(shown):
        writer.add_audio(f"valid/generated_{k}", fake.clamp(-1, 1).unsqueeze(0), step, sample_rate=SAMPLE_RATE)
        if step == 0:
            writer.add_audio(f"valid/real_{k}", real.unsqueeze(0), step, sample_rate=SAMPLE_RATE)
    if shown:
        writer.add_figure(
            "valid/log_mels",
            spectrogram_figure(
                [
                    [(f"real {k}", log_mel(r)) for k, (r, _) in enumerate(shown)],
                    [(f"generated {k}", log_mel(f)) for k, (_, f) in enumerate(shown)],
                ]
            ),
            step,
        )
    return scores


if __name__ == "__main__":
    cli.command(main)
