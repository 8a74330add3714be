"""Train ASGAN (reference notes 28-33): alternating D/G phases, ADA, R1, an EMA generator, validation, checkpoints.

    python train_asgan.py model=rp_w train_root=<features> checkpoint_path=runs/asgan n_valid=400 key=value ...
    python train_asgan.py --config configs/sc09_hubert.yaml train_root=... checkpoint_path=...  (a YAML file first)
    torchrun --nproc_per_node 4 train_asgan.py model=rp_w ...               (DDP, engine=torch)
    deepspeed --num_gpus 4 train_asgan.py model=rp_w engine=deepspeed ...   (DeepSpeed)
    python train_asgan.py --help                                            (all keys and defaults)

A user error ends with one `error: ...` line and status 2; `--debug` shows its traceback (density/runtime/cli.py).
The file reads top to bottom: parse the config, set up engine and data, build (models, optimisers, resume), then
the loop of density/runtime/trainer.py (epochs with exact resume) over `Loop.step` and `Loop.end_of_step`. The
steps' pieces live in density/gan/training.py (state, schedule, D and G steps, logging), density/gan/validation.py,
density/runtime/checkpoint.py (the checkpoint schema) and density/runtime/run.py (run folder, signals,
non-finite guard).
Deliberate differences from the reference are listed in the README (training section).
"""

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter

from density.config import ConfigError, TrainConfig, check_config, config_to_yaml, parse_config
from density.dataset import Collate, DatasetError, FeatureNorm, build_datasets, stop_workers
from density.gan import training
from density.gan.training import LOG_AFTER, StepLogger, TrainState, build_optimizers, next_phase, set_lrs, update_ema
from density.gan.validation import fad_encoder, real_statistics, sample_latents, sample_vocoder, validate
from density.models import Discriminator, Generator
from density.runtime import checkpoint as ckpt
from density.runtime import cli, trainer
from density.runtime.engine import make_engine
from density.runtime.run import BEST_FAD, Harness, ignore_stop_signals, seed_all

log = logging.getLogger("train_asgan")


def main(argv):
    argv = trainer.without_launcher_arguments(argv)
    if trainer.show_help(argv, __doc__, TrainConfig):
        return
    cfg = parse_config(argv)
    check_config(cfg)
    trainer.log_per_rank()
    train_ds, valid_ds = build_datasets(cfg)
    collate = Collate.from_config(cfg)
    engine = make_engine(cfg)
    seed_all(cfg.seed + engine.rank)  # rank 0 is seeded like the reference; other ranks draw their own z
    torch.backends.cudnn.benchmark = engine.device.type == "cuda"
    torch.set_flush_denormal(True)  # CPU: a fresh G's outputs (~1e-7) make subnormal floats in D, 10x slower
    data = training_batches(cfg, engine, train_ds, collate)
    with trainer.open_harness(cfg, main=engine.is_main) as harness:
        try:
            loop = build(cfg, engine, harness, data)
            limit = f"max_steps={cfg.max_steps}" if cfg.max_steps else f"n_epochs={cfg.n_epochs}"
            if trainer.already_finished(
                loop, loop.state, steps_per_epoch=len(data.loader), limit=limit, main=engine.is_main
            ):
                return
            with open_logs(cfg, engine, valid_ds, collate) as (loop.writer, loop.validation):
                log.info(
                    "engine=%s precision=%s device=%s world_size=%d; G %d params, D %d params; %d batches per epoch",
                    cfg.engine,
                    engine.precision,
                    engine.device,
                    engine.world_size,
                    *(sum(p.numel() for p in m.module.parameters()) for m in (loop.G, loop.D)),
                    len(data.loader),
                )
                train(loop)
        finally:
            engine.close()


@dataclass
class TrainData:
    """This rank's training batches: the sampler (its share of the items, reshuffled every epoch), the generator
    that seeds the DataLoader workers per (epoch, rank), independent of the training RNG, the DataLoader, and the
    current epoch's iterator (its workers are stopped when training ends)."""

    sampler: DistributedSampler
    loader_rng: torch.Generator
    loader: DataLoader
    batches: Iterator | None = None


def training_batches(cfg, engine, train_ds, collate):
    """-> TrainData of full batches of batch_size per rank; ConfigError when the split makes none."""
    sampler = DistributedSampler(
        train_ds, num_replicas=engine.world_size, rank=engine.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    loader_rng = torch.Generator()
    loader = DataLoader(
        train_ds,
        cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=engine.device.type == "cuda",
        generator=loader_rng,
        worker_init_fn=ignore_stop_signals,
    )
    if len(loader) == 0:
        raise ConfigError(
            f"{len(train_ds)} training items give no full batch of batch_size={cfg.batch_size} "
            f"per rank ({engine.world_size} ranks); lower batch_size or add data"
        )
    return TrainData(sampler, loader_rng, loader)


@dataclass
class Validation:
    """What validation needs (main rank): the validation batches, the FAD reference statistics (mean (C,),
    covariance (C, C)) of the real items, the FAD encoder (None: raw frames), and the fixed z (audio_samples,
    z_dim) and vocoder of the tensorboard audio (None: no audio)."""

    loader: DataLoader
    real_stats: tuple[torch.Tensor, torch.Tensor]
    encode: Callable | None
    audio: tuple[torch.Tensor, Callable] | None


@dataclass
class Loop:
    """What the training loop works with: config, engine, the wrapped G and D (density/runtime/engine.py
    Trainables), the EMA G, FeatureNorm, TrainState (the position in the run and what a checkpoint continues),
    Harness, the training batches, and on the main rank the tensorboard writer, validation and step logger.
    The loop of density/runtime/trainer.py drives it: epoch_batches, step, end_of_step."""

    cfg: DictConfig
    engine: trainer.Engine
    G: trainer.Trainable
    D: trainer.Trainable
    g_ema: Generator
    norm: FeatureNorm
    state: TrainState
    harness: Harness
    data: TrainData
    writer: SummaryWriter | None = None
    validation: Validation | None = None
    logger: StepLogger | None = None

    def more_epochs(self):
        cfg, state = self.cfg, self.state
        return state.epoch < cfg.n_epochs and not (cfg.max_steps and state.steps >= cfg.max_steps)

    def epoch_batches(self, epoch, first):
        """The epoch's batches from batch `first` on: the batches before it are drawn again and dropped, so that
        every random draw of the data pipeline happens as it did before a resume."""
        data, engine = self.data, self.engine
        data.sampler.set_epoch(epoch)
        data.loader_rng.manual_seed(self.cfg.seed + epoch * engine.world_size + engine.rank)
        data.batches = iter(data.loader)
        for _ in range(first):
            next(data.batches)
        return data.batches

    def step(self, batch):
        """One D or G step on a batch (reference note 29) -> the gradient norms it measured for the main rank's
        gradient summary (a dict), or None when none is due."""
        cfg, engine, state, step = self.cfg, self.engine, self.state, self.state.steps
        real, _, _, z = batch
        real, z = self.norm.normalize(real.to(engine.device, non_blocking=True)), z.to(engine.device, non_blocking=True)
        phase = next_phase(engine, state)
        set_lrs(cfg, step, self.G.optimizer, self.D.optimizer)
        grad_norms = {} if engine.is_main and step % cfg.grad_summary_interval == 0 else None
        if phase == "D":
            stats = training.d_step(
                cfg,
                engine,
                self.G,
                self.D,
                state.ada,
                real,
                z,
                steps=step,
                batch_index=state.batch_index,
                grad_norms=grad_norms,
            )
        else:
            stats = training.g_step(cfg, engine, self.G, self.D, state.ada, real, z, steps=step, grad_norms=grad_norms)
        self.harness.check_finite(state.record(stats, cfg.update_ratio), step)
        return grad_norms

    def end_of_step(self, grad_norms, pbar):
        """Finish the step: logging, the EMA generator and validation on the main rank, then agree on stopping
        across ranks and write the periodic, final and best checkpoints.
        -> whether training ends here (a stop signal, max_steps, or the last batch of the last epoch)."""
        cfg, state, step = self.cfg, self.state, self.state.steps
        save_best = self.log_and_validate(grad_norms, pbar) if self.engine.is_main else False
        stop, save_best = trainer.any_rank(self.engine, self.harness.stop_requested, save_best)  # every rank alike
        last_batch = state.epoch == cfg.n_epochs - 1 and state.batch_index == len(self.data.loader) - 1
        final = stop or bool(cfg.max_steps and step + 1 >= cfg.max_steps) or last_batch
        periodic = trainer.on_interval(step, cfg.checkpoint_interval) or final
        state.steps += 1
        state.batch_index += 1
        if periodic or save_best:
            self.save_checkpoints(step, periodic=periodic, best=save_best)
        if stop:
            trainer.log_stopped(log, step, cfg.checkpoint_path)
        return final

    def log_and_validate(self, grad_norms, pbar):
        """Main rank: stdout and tensorboard scalars, the EMA generator, and validation when due.
        -> whether this step's validation FAD is the best so far."""
        cfg, state, step = self.cfg, self.state, self.state.steps
        if step > LOG_AFTER:
            self.logger(state, grad_norms, pbar)
        if step > 0 and step % (cfg.ema_every or cfg.checkpoint_interval) == 0:
            update_ema(self.g_ema, self.G.module, cfg.rp_w_cfg.g_ema_weight)
        if self.validation is None or not trainer.on_interval(step, cfg.validation_interval):
            return False
        self.harness.require_finite({"g": self.G.module.state_dict(), "d": self.D.module.state_dict()}, step)
        v = self.validation
        fad_value = validate(
            cfg,
            self.G.module,
            self.D.module,
            v.loader,
            v.real_stats,
            self.writer,
            step,
            self.engine.device,
            self.norm,
            v.encode,
            v.audio,
        )
        log.info("step %d: validation FAD %.4f (best %.4f)", step, fad_value, state.best_fad)
        if fad_value < state.best_fad:
            state.best_fad = fad_value
            return True
        return False

    def save_checkpoints(self, step, *, periodic, best):
        """Write ckpt_<step>.pt (periodic) and ckpt_best_fad.pt (best) on the main rank; every rank gives its
        RNG states."""
        rng_states = self.engine.all_gather_object(ckpt.rng_state())  # per rank, to resume
        checkpoint = self.checkpoint_dict(rng_states) if self.engine.is_main else None
        if periodic:
            path = self.harness.save_periodic(checkpoint, step)
            if self.engine.is_main:
                log.info("step %d: saved %s", step, path)
        if best:
            self.harness.save(checkpoint, BEST_FAD, step)

    def checkpoint_dict(self, rng_states):
        """The checkpoint (density/runtime/checkpoint.py KEYS) after the last finished step."""
        return ckpt.training_checkpoint(
            G=self.G,
            D=self.D,
            g_ema=self.g_ema,
            train_state=self.state.state_dict(rng_states),
            cfg_yaml=config_to_yaml(self.cfg),
            run_id=self.harness.run.run_id,
            feature_norm=self.norm.to_checkpoint(),
        )


def build(cfg, engine, harness, data):
    """Models, optimisers, FeatureNorm and TrainState: from the checkpoint rank 0 resumes, else from scratch with
    the weights of init_checkpoint when given."""
    resume = trainer.agreed_resume(harness, engine)
    g, d = Generator(cfg.rp_w_cfg), Discriminator.from_config(cfg)
    g_ema = copy.deepcopy(g).eval().requires_grad_(False)
    checkpoint = ckpt.load(resume) if resume else None
    if checkpoint is not None:
        ckpt.load_models(checkpoint, resume, g, d, g_ema)
    elif cfg.init_checkpoint:  # fine-tuning: the weights only; optimisers, step and run are new
        skipped = ckpt.load_init_weights(
            cfg.init_checkpoint, parts=list(cfg.init_parts), strict=cfg.init_strict, g=g, d=d, g_ema=g_ema
        )
        for part, problems in skipped.items():
            for problem in problems:
                log.warning("init_checkpoint %s: skipped (fresh init) %s", part, problem)
        log.info("initialised %s from %s; a new run starts at step 0", "+".join(skipped), cfg.init_checkpoint)
    if checkpoint is not None and checkpoint.get("feature_norm"):  # the statistics the run started with
        norm = FeatureNorm.from_checkpoint(checkpoint)
    else:
        norm = FeatureNorm.fit(data.loader.dataset) if cfg.normalize_features else FeatureNorm()
    norm.to(engine.device)
    G, D = (engine.wrap(m, opt) for m, opt in zip((g, d), build_optimizers(cfg, g, d)))
    g_ema.to(engine.device)
    state = TrainState(ada=training.make_augmenter(cfg, norm))
    if checkpoint is not None:
        ckpt.load_optimizers(checkpoint, G, D)
        if not state.load_state_dict(checkpoint, rank=engine.rank, world_size=engine.world_size, seed=cfg.seed):
            log.warning(
                "%s has no resume state (reference checkpoint): ADA restarts at p=%g and epoch %d is "
                "replayed from its start",
                resume,
                cfg.aug_init_p,
                state.epoch,
            )
        harness.saved_step = state.steps - 1  # a bad data file met before the next step writes nothing new
        log.info("resumed from %s at step %d, epoch %d, batch %d", resume, state.steps, state.epoch, state.batch_index)
    return Loop(cfg, engine, G, D, g_ema, norm, state, harness, data)


@contextlib.contextmanager
def open_logs(cfg, engine, valid_ds, collate):
    """Main rank: -> (tensorboard writer, Validation or None), the writer closed on exit; (None, None) elsewhere.

    The vocoder and the FAD encoder come first, so that a bad fad_vocoder or fad_hubert_checkpoint fails before the
    logs exist.
    """
    if not engine.is_main:
        yield None, None
        return
    to_audio = sample_vocoder(cfg, engine.device)
    encode = fad_encoder(cfg, engine.device, to_audio)
    audio = (sample_latents(cfg), to_audio) if cfg.audio_samples and to_audio is not None else None
    if cfg.audio_samples and to_audio is None:
        log.info(
            "audio_samples=%d: no audio in tensorboard for hubert_L6 features without fad_vocoder (a HiFi-GAN "
            "for them)",
            cfg.audio_samples,
        )
    writer = SummaryWriter(str(Path(cfg.checkpoint_path) / "logs"))
    try:
        writer.add_text("config", "```\n" + config_to_yaml(cfg) + "\n```")
        loader = DataLoader(
            valid_ds,
            cfg.batch_size,
            shuffle=False,
            drop_last=True,
            collate_fn=collate,
            num_workers=cfg.num_workers,
            generator=torch.Generator(),
            worker_init_fn=ignore_stop_signals,
        )
        validation = None
        if len(loader):
            validation = Validation(loader, real_statistics(valid_ds, encode), encode, audio)
        else:
            log.warning(
                "%d validation items make no full batch of %d: validation is off", len(valid_ds), cfg.batch_size
            )
        yield writer, validation
    finally:
        writer.close()


def train(loop):
    """Epochs of steps until n_epochs, max_steps or a stop signal; a bad data file met on the way is named after
    a checkpoint of the steps done (one process)."""
    engine, state = loop.engine, loop.state
    if engine.is_main:
        loop.logger = StepLogger(loop.cfg, loop.writer, loop.G, loop.D, engine.device, state.steps)
    try:
        with loop.harness.stop_signals():
            trainer.run_epochs(loop, state, steps_per_epoch=len(loop.data.loader), show_progress=engine.is_main)
    except DatasetError as e:  # a bad file met mid-run: keep the steps since the last checkpoint, then stop
        message = str(e).strip().splitlines()[-1].split("DatasetError: ", 1)[-1]  # a worker's error is a traceback
        if engine.world_size == 1 and state.steps > 0 and state.steps - 1 != loop.harness.saved_step:
            path = loop.harness.save_periodic(loop.checkpoint_dict([ckpt.rng_state()]), state.steps - 1, keep_last=0)
            message += f"; checkpoint written: {path}"
        raise DatasetError(f"{message} (fix or delete that file, then resume with resume_checkpoint=auto)") from e
    finally:
        stop_workers(loop.data.batches)  # now, not at interpreter exit, where a live worker could block it forever


if __name__ == "__main__":
    cli.command(main)
