"""Train a vocoder (HiFi-GAN or the iSTFT/Vocos-style one of density/vocoders/vocoder.py) on (feature, waveform)
pairs.

    python train_vocoder.py vocoder=hifigan_mel_small train_csv=<splits>/sc09-train.csv \\
        valid_csv=<splits>/sc09-valid.csv feature_root=<features> checkpoint_path=runs/vocoder [key=value ...]
    python train_vocoder.py vocoder=hifigan_hubert feature_root=data/sc09_hubert ...    (HuBERT layer-6 features)
    torchrun --nproc_per_node 4 train_vocoder.py ...                  (DDP, engine=torch; gloo on CPUs)
    deepspeed --num_gpus 4 train_vocoder.py engine=deepspeed ...      (DeepSpeed)
    python train_vocoder.py --help                                    (all keys and defaults)

`vocoder` names a config of density.vocoders.vocoder.VOCODER_CONFIGS (hifigan_hubert, hifigan_mel,
hifigan_mel_small, istft_hubert, istft_mel); `vocoder_config.<field>=...` changes one of its fields. Data: the
clips of the split CSVs (split_data.py) and their features in the cache of hubert_feature_reader.py
(`feature_root`, the folder train_asgan.py reads); log-mels may instead be computed from the wavs (feature_root
empty). Features are raw, not normalised (an ASGAN run with normalize_features de-normalises before its vocoder).

The recipe is HiFi-GAN's (density/vocoders/training.py): random segments of `segment_frames` frames cut at the
same place in the features and the audio; multi-period and multi-scale discriminators; least-squares adversarial
loss, feature matching (x fm_weight) and L1 between log-mels (x mel_weight); AdamW (lr, betas, weight_decay)
with the learning rate multiplied by lr_decay once per epoch (or every lr_decay_every steps). The first
adv_start_step steps train the generator on the log-mel loss alone (no discriminator: Vocos' pretraining;
0 = adversarial from the start, as HiFi-GAN).

Writes to checkpoint_path: ckpt_XXXXXXXX.pt (periodic and final: G, D, optimisers, schedulers, loss scalers, RNG
states per rank, step and data position, to resume exactly with resume_checkpoint=auto or a file; the run-folder
rules of train_asgan.py apply, see density/runtime/run.py), vocoder_best.pt (the generator with the lowest
validation log-mel L1) and vocoder.pt (the final generator), both in the format of
density.vocoders.vocoder.save_vocoder that generate.py --vocoder, evaluate.py --vocoder and
hubconf.asgan_from_checkpoint(vocoder=...) load, and logs/
(tensorboard: losses, learning rate, gradient norms; validation log-mel L1 and multi-resolution STFT distance on
n_valid clips spread over valid_csv, audio and spectrograms of audio_samples of them). Ctrl-C / SIGTERM finish
the step, write a checkpoint and exit 0. A user error ends with one `error: ...` line and status 2 (--debug shows
its traceback).

The file reads top to bottom: the config, the data, `main`, the loop state (`Loop`: step, end_of_step), `build`
(models, optimisers, resume) and `train`, which runs the epoch loop of density/runtime/trainer.py.
"""

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.optim.lr_scheduler import ExponentialLR
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
    read_overrides,
    require_keys,
)
from density.data.splits import read_split_csv
from density.runtime import checkpoint as ckpt
from density.runtime import cli, trainer
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
    *trainer.LOOP_KEYS,
    "vocoder",
)
VALID_BATCH = 16


@dataclass
class VocoderTrainConfig:
    train_csv: str = MISSING  # split_data.py CSVs (column path)
    valid_csv: str = MISSING
    checkpoint_path: str = MISSING  # run folder
    feature_root: str = ""  # feature cache of hubert_feature_reader.py; '' = log-mels computed from the wavs
    vocoder: str = "hifigan_mel_small"  # a name of density.vocoders.vocoder.VOCODER_CONFIGS
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
        cfg = OmegaConf.merge(cfg, read_overrides(fields))
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


def check_segment_length(segment_frames, paths, hop):
    """ConfigError when segments of `segment_frames` frames are longer than every training clip (each would be mostly
    padding, and memory grows with the length). Up to a 1-s clip's frames nothing is read; beyond, the clips'
    headers (their length at 16 kHz) decide."""
    if segment_frames <= vt.full_clip_frames(hop):
        return
    frames = [int(info.frames * SAMPLE_RATE / info.samplerate) // hop for info in (sf.info(str(p)) for p in paths)]
    longest = max(frames)
    if segment_frames > longest:
        raise ConfigError(
            f"segment_frames={segment_frames}: must be in [1, {longest}]: the longest training clip "
            f"({paths[frames.index(longest)]}) has {longest} frames of {hop} samples (a 1-s clip "
            f"has {vt.full_clip_frames(hop)})"
        )


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
    check_segment_length(cfg.segment_frames, train_paths, config.hop)
    train = vt.VocoderClips(train_paths, segment_frames=cfg.segment_frames, seed=seed, **common)
    valid = vt.VocoderClips(valid_paths, segment_frames=vt.full_clip_frames(config.hop), random_crop=False, **common)
    return train, valid


def main(argv):
    argv = trainer.without_launcher_arguments(argv)
    if trainer.show_help(argv, __doc__, VocoderTrainConfig):
        return None
    cfg, fmt, config = parse_config(argv)
    trainer.log_per_rank()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    train_ds, valid_ds = make_datasets(cfg, config, cfg.seed)
    engine = make_engine(cfg)
    sampler = DistributedSampler(
        train_ds, num_replicas=engine.world_size, rank=engine.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    data = TrainData(train_ds, sampler, steps_per_epoch=len(sampler) // cfg.batch_size)
    if data.steps_per_epoch == 0:
        engine.close()
        raise ConfigError(
            f"{len(train_ds)} training clips give no full batch of batch_size={cfg.batch_size} per "
            f"rank ({engine.world_size} ranks); lower batch_size or add data"
        )
    with trainer.open_harness(cfg, main=engine.is_main) as harness:
        try:
            loop = build(cfg, fmt, config, engine, harness, data, valid_ds)
            limit = f"max_steps={cfg.max_steps}"
            if trainer.already_finished(
                loop, loop.position, steps_per_epoch=data.steps_per_epoch, limit=limit, main=engine.is_main
            ):
                return finish(loop)
            return train(loop)
        finally:
            engine.close()


@dataclass
class TrainData:
    """This rank's training batches: the segments, the sampler (this rank's share, reshuffled every epoch) and the
    number of full batches per epoch."""

    dataset: vt.VocoderClips
    sampler: DistributedSampler
    steps_per_epoch: int


@dataclass
class TrainTime:
    """Training time across resumes: the wall-clock and CPU seconds of the runs before, this run's start, and the
    (time, step) of the last training summary."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    start: float = 0.0
    cpu_start: float = 0.0
    last_summary: tuple[float, int] = (0.0, 0)

    def begin(self, step):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.last_summary = (self.start, step)

    def totals(self):
        """The checkpoint's 'train_seconds' and 'train_cpu_seconds'."""
        return {
            "train_seconds": self.seconds + time.perf_counter() - self.start,
            "train_cpu_seconds": self.cpu_seconds + time.process_time() - self.cpu_start,
        }

    def seconds_per_step(self, step):
        """Mean wall-clock seconds per step since the last summary, which this one becomes."""
        now, (then, then_step) = time.perf_counter(), self.last_summary
        self.last_summary = (now, step)
        return (now - then) / max(1, step - then_step)


@dataclass
class StepResult:
    """A step's losses (means over ranks: g_loss, mel_l1, g_adv, feature_matching, d_loss) and the gradient norms
    of G and D (NaN: a skipped update; D's is 0 before adversarial training starts)."""

    losses: dict[str, float]
    g_norm: float
    d_norm: float


@dataclass
class Loop:
    """What the training loop works with: config, engine, Harness, the vocoder's identity (what a resumed
    checkpoint must match), the generator g and discriminators d, plain and wrapped for training (G, D:
    density/runtime/engine.py Trainables), their learning-rate schedules, the data, the position in the run, the
    best validation scores, the training time and (main rank) the tensorboard writer. The loop of
    density/runtime/trainer.py drives it: epoch_batches, step, end_of_step."""

    cfg: DictConfig
    engine: trainer.Engine
    harness: Harness
    identity: dict[str, Any]
    g: torch.nn.Module
    d: vt.Discriminators
    G: trainer.Trainable
    D: trainer.Trainable
    g_sched: ExponentialLR
    d_sched: ExponentialLR
    data: TrainData
    valid_ds: vt.VocoderClips
    position: trainer.Position = field(default_factory=trainer.Position)
    best: dict[str, float] = field(default_factory=lambda: {"mel_l1": math.inf})
    time: TrainTime = field(default_factory=TrainTime)
    writer: SummaryWriter | None = None
    stopped: bool = False  # by a stop signal (on any rank)

    def more_epochs(self):
        return self.position.steps < self.cfg.max_steps

    def epoch_batches(self, epoch, first):
        """The epoch's batches from batch `first` on (segment crops and order fixed per epoch)."""
        data, size = self.data, self.cfg.batch_size
        data.sampler.set_epoch(epoch)
        data.dataset.set_epoch(epoch)
        order = list(data.sampler)
        batches = [order[k * size : (k + 1) * size] for k in range(data.steps_per_epoch)]
        return DataLoader(
            data.dataset,
            batch_sampler=batches[first:],
            num_workers=self.cfg.num_workers,
            pin_memory=self.engine.device.type == "cuda",
            worker_init_fn=ignore_stop_signals,
            generator=torch.Generator(),
        )

    def step(self, batch):
        """One step on a batch of segments (features (B, frames, C), waveforms (B, T)): the discriminators' step
        (once adversarial training has started), then the generator's -> StepResult."""
        cfg, engine, step = self.cfg, self.engine, self.position.steps
        feats, wav = batch
        feats, real = feats.to(engine.device, non_blocking=True), wav.to(engine.device, non_blocking=True).unsqueeze(1)
        adversarial = step >= cfg.adv_start_step
        with engine.autocast():
            fake = self.G(feats)
        fake = fake.float()
        loss_d, d_norm = (
            self.discriminator_step(real, fake) if adversarial else (torch.zeros((), device=engine.device), 0.0)
        )
        losses, g_norm = self.generator_step(real, fake, loss_d, adversarial=adversarial)
        finite = math.isfinite(g_norm) and (not adversarial or math.isfinite(d_norm))
        if not finite:
            log.warning(
                "step %d: non-finite loss or gradient (G %s, D %s); update skipped",
                step,
                losses["g_loss"],
                losses["d_loss"],
            )
        self.harness.check_finite(finite, step)
        return StepResult(losses, g_norm, d_norm)

    def discriminator_step(self, real, fake):
        """Least-squares loss of the discriminators on real and generated waveforms (B, 1, T) and their update
        -> (loss, gradient norm; NaN when the loss is not finite on some rank and the update is skipped)."""
        self.D.zero_grad()
        with self.engine.autocast():
            logits, _ = self.D(torch.cat([real, fake.detach()]))
        loss_d = vt.discriminator_loss(*zip(*(x.chunk(2) for x in logits)))
        (l_d,) = mean_over_ranks(self.engine, loss_d)
        return loss_d, optimise(self.D, loss_d, "D", self.position.steps) if math.isfinite(l_d) else math.nan

    def generator_step(self, real, fake, loss_d, *, adversarial):
        """The generator's loss (log-mel L1, plus adversarial and feature-matching losses when adversarial) and
        its update -> (the step's losses as means over ranks, the generator's gradient norm)."""
        cfg, engine, zero = self.cfg, self.engine, torch.zeros((), device=self.engine.device)
        self.G.zero_grad()
        loss_mel, loss_adv, loss_fm = vt.log_mel_l1(fake, real), zero, zero
        if adversarial:
            self.D.module.requires_grad_(False)  # no gradients for D, and DDP's D is not involved
            with engine.autocast():
                logits, fmaps = self.D.module(torch.cat([real, fake]))
            self.D.module.requires_grad_(True)
            loss_adv = vt.generator_adv_loss([x.chunk(2)[1] for x in logits])
            loss_fm = vt.feature_matching_loss(
                [[m.chunk(2)[0] for m in f] for f in fmaps], [[m.chunk(2)[1] for m in f] for f in fmaps]
            )
        loss_g = loss_adv + cfg.fm_weight * loss_fm + cfg.mel_weight * loss_mel
        means = mean_over_ranks(engine, loss_g, loss_mel, loss_adv, loss_fm, loss_d)
        g_norm = optimise(self.G, loss_g, "G", self.position.steps) if math.isfinite(means[0]) else math.nan
        return dict(zip(("g_loss", "mel_l1", "g_adv", "feature_matching", "d_loss"), means)), g_norm

    def end_of_step(self, result, pbar):
        """Finish the step: learning-rate decay, logging and validation (main rank), then agree on stopping
        across ranks and write the periodic or final checkpoint -> whether training ends here."""
        cfg, position, step = self.cfg, self.position, self.position.steps
        every = cfg.lr_decay_every
        if (every and (step + 1) % every == 0) or (not every and position.batch_index + 1 == self.data.steps_per_epoch):
            self.g_sched.step()
            self.d_sched.step()
        final = step + 1 >= cfg.max_steps
        if self.engine.is_main:
            self.log_and_validate(result, pbar, final=final)
        (self.stopped,) = trainer.any_rank(
            self.engine, self.harness.stop_requested
        )  # every rank stops at the same step
        final = final or self.stopped
        position.steps += 1
        position.batch_index += 1
        if trainer.on_interval(step, cfg.checkpoint_interval) or final:
            rng_states = self.engine.all_gather_object(ckpt.rng_state())
            path = self.harness.save_periodic(self.checkpoint_dict(rng_states) if self.engine.is_main else None, step)
            log.info("step %d: saved %s", step, path)
        return final

    def log_and_validate(self, result, pbar, *, final):
        """Main rank: training scalars every summary_interval steps; validation every validation_interval steps,
        at the last step and on a stop signal, saving vocoder_best.pt when its log-mel L1 is the lowest so far."""
        cfg, step, losses = self.cfg, self.position.steps, result.losses
        if step % cfg.summary_interval == 0:
            scalars = {f"train/{k}": v for k, v in losses.items()} | {
                "opt/g_grad_norm": result.g_norm,
                "opt/d_grad_norm": result.d_norm,
                "opt/lr": self.G.optimizer.param_groups[0]["lr"],
                "time/sec_per_step": self.time.seconds_per_step(step),
            }
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            pbar.set_postfix(mel=f"{losses['mel_l1']:.3f}", d=f"{losses['d_loss']:.3f}", adv=f"{losses['g_adv']:.3f}")
        if step % cfg.validation_interval == 0 or final or self.harness.stop_requested:
            self.harness.require_finite(self.g.state_dict(), step)  # before its scores, audio and vocoder_best.pt
            scores = validate_vocoder(self.g, self.valid_ds, self.engine.device, self.writer, step, cfg.audio_samples)
            tqdm.write(f"step {step}: validation log-mel L1 {scores['mel_l1']:.4f}, MR-STFT {scores['mr_stft']:.4f}")
            if scores["mel_l1"] < self.best["mel_l1"]:
                self.best = dict(scores, steps=step)
                save_vocoder(self.g, Path(cfg.checkpoint_path) / BEST)

    def checkpoint_dict(self, rng_states):
        """The checkpoint (RESUME_KEYS and more) after the last finished step."""
        (g_optim, g_scaler), (d_optim, d_scaler) = self.G.state_dict(), self.D.state_dict()
        return {
            "g_state_dict": ckpt.cpu_state(self.g),
            "d_state_dict": ckpt.cpu_state(self.d),
            "g_optim_state_dict": g_optim,
            "d_optim_state_dict": d_optim,
            "g_scaler_state_dict": g_scaler,
            "d_scaler_state_dict": d_scaler,
            "g_sched_state_dict": self.g_sched.state_dict(),
            "d_sched_state_dict": self.d_sched.state_dict(),
            **trainer.loop_entries(self.position, best=self.best, rng_state=rng_states, cfg=self.cfg),
            **self.time.totals(),
            "vocoder": self.identity,
            "run_id": self.harness.run.run_id if self.harness.run else None,
        }


def build(cfg, fmt, config, engine, harness, data, valid_ds):
    """Generator, discriminators, optimisers and schedules: from the checkpoint rank 0 resumes (which must be of
    the same vocoder), else new, with the same initial weights on every rank."""
    resume = trainer.agreed_resume(harness, engine)
    seed_all(cfg.seed)  # every rank builds the same initial weights
    g, d = build_vocoder(fmt, config), vt.Discriminators(cfg.d_width)
    identity = {"name": cfg.vocoder, "format": fmt, "config": dataclasses.asdict(config), "d_width": cfg.d_width}
    checkpoint = ckpt.load(resume, RESUME_KEYS, "a train_vocoder.py checkpoint") if resume else None
    if checkpoint is not None:
        if checkpoint["vocoder"] != identity:
            raise ckpt.CheckpointError(
                f"{resume}: written for the vocoder {checkpoint['vocoder']}, but this run trains "
                f"{identity}; use the settings of the run that wrote it"
            )
        g.load_state_dict(checkpoint["g_state_dict"])
        d.load_state_dict(checkpoint["d_state_dict"])
    G, D = (
        engine.wrap(m, torch.optim.AdamW(m.parameters(), cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay))
        for m in (g, d)
    )
    schedules = (ExponentialLR(t.optimizer, cfg.lr_decay) for t in (G, D))
    loop = Loop(cfg, engine, harness, identity, g, d, G, D, *schedules, data, valid_ds)
    if checkpoint is not None:
        resume_from(loop, checkpoint)
        at = loop.position
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume, at.steps, at.epoch, at.batch_index)
    else:
        seed_all(cfg.seed + engine.rank)
    log_sizes(loop, fmt, config)
    return loop


def resume_from(loop, checkpoint):
    """Optimiser, loss-scaler and schedule states, the position, best scores and training time of a checkpoint."""
    engine = loop.engine
    loop.G.load_state_dict(checkpoint["g_optim_state_dict"], checkpoint.get("g_scaler_state_dict"))
    loop.D.load_state_dict(checkpoint["d_optim_state_dict"], checkpoint.get("d_scaler_state_dict"))
    loop.g_sched.load_state_dict(checkpoint["g_sched_state_dict"])
    loop.d_sched.load_state_dict(checkpoint["d_sched_state_dict"])
    rng = trainer.rank_rng(
        checkpoint["rng_state"],
        rank=engine.rank,
        world_size=engine.world_size,
        seed=loop.cfg.seed,
        steps=checkpoint["steps"] + 1,
    )
    loop.position = trainer.Position.after(checkpoint, rng)
    loop.best = checkpoint["best"]
    loop.time = TrainTime(checkpoint.get("train_seconds", 0.0), checkpoint.get("train_cpu_seconds", 0.0))


def log_sizes(loop, fmt, config):
    cfg, engine = loop.cfg, loop.engine
    log.info(
        "%s (%s, hop %d): G %d params, D %d params (d_width %g); %d train clips, %d validation clips, "
        "%d steps per epoch per rank; engine=%s precision=%s device=%s world_size=%d",
        cfg.vocoder,
        fmt,
        config.hop,
        sum(p.numel() for p in loop.g.parameters()),
        sum(p.numel() for p in loop.d.parameters()),
        cfg.d_width,
        len(loop.data.dataset),
        len(loop.valid_ds),
        loop.data.steps_per_epoch,
        cfg.engine,
        engine.precision,
        engine.device,
        engine.world_size,
    )


def train(loop):
    """Epochs of steps until max_steps or a stop signal, then vocoder.pt (main rank)
    -> the best validation scores {'mel_l1', 'mr_stft', 'steps'}, or None when a stop signal ended training."""
    cfg, engine, folder = loop.cfg, loop.engine, Path(loop.cfg.checkpoint_path)
    if engine.is_main:
        loop.writer = SummaryWriter(str(folder / "logs"))
        loop.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
    loop.time.begin(loop.position.steps)
    try:
        with loop.harness.stop_signals():
            trainer.run_epochs(
                loop, loop.position, steps_per_epoch=loop.data.steps_per_epoch, show_progress=engine.is_main
            )
    finally:
        if loop.writer is not None:
            loop.writer.close()
    if engine.is_main:
        save_vocoder(loop.g, folder / FINAL)
    if loop.stopped:
        trainer.log_stopped(log, loop.position.steps - 1, folder)
        return None
    log.info(
        "done: %d steps; best validation log-mel L1 %.4f at step %s; %s and %s in %s",
        loop.position.steps,
        loop.best["mel_l1"],
        loop.best.get("steps"),
        BEST,
        FINAL,
        folder,
    )
    return loop.best


def finish(loop):
    """A finished run resumed: vocoder.pt from the last checkpoint's generator when it is missing (a kill after
    that checkpoint), else nothing (main rank) -> None."""
    final = Path(loop.cfg.checkpoint_path) / FINAL
    if loop.engine.is_main and not final.is_file():
        loop.harness.require_finite(loop.g.state_dict(), loop.position.steps - 1)
        save_vocoder(loop.g, final)
        log.info("wrote the missing %s", final)


@torch.no_grad()
def validate_vocoder(g, valid_ds, device, writer, step, audio_samples):
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
