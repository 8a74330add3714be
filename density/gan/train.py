"""Train ASGAN (reference notes 28-33): alternating D/G phases, ADA, R1, an EMA generator, validation, checkpoints.

    python train_asgan.py model=rp_w train_root=<features> checkpoint_path=runs/asgan n_valid=400 key=value ...
    python train_asgan.py --config configs/sc09_hubert.yaml train_root=... checkpoint_path=...  (a YAML file first)
    torchrun --nproc_per_node 4 train_asgan.py model=rp_w ...               (DDP, engine=torch)
    deepspeed --num_gpus 4 train_asgan.py model=rp_w engine=deepspeed ...   (DeepSpeed)
    python train_asgan.py --help                                            (all keys and defaults)

A user error ends with one `error: ...` line and status 2; `--debug` shows its traceback (density/cli.py).
The file reads top to bottom: parse the config, set up engine, data, models and optimisers, resume, loop. The
loop's pieces live in density/training.py (state, schedule, D and G steps, logging), density/validation.py,
density/checkpoint.py (the checkpoint schema) and density/run.py (run folder, signals, non-finite guard).
Deliberate differences from the reference are listed in the README (training section).
"""

import contextlib
import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from density.config import ConfigError, check_config, config_to_yaml, default_config, parse_config
from density.dataset import Collate, DatasetError, FeatureNorm, build_datasets, stop_workers
from density.gan import training
from density.gan.training import LOG_AFTER, StepLogger, TrainState, build_optimizers, next_phase, set_lrs, update_ema
from density.gan.validation import fad_encoder, real_statistics, sample_latents, sample_vocoder, validate
from density.models import Discriminator, Generator
from density.runtime import checkpoint as ckpt
from density.runtime import cli
from density.runtime.engine import make_engine
from density.runtime.run import Harness, ignore_stop_signals, seed_all

log = logging.getLogger("train_asgan")


def main(argv):
    # ------------------------------------------------------------------ config
    argv = [a for a in argv if not a.startswith("--local_rank")]  # added by the deepspeed launcher
    if "--help" in argv or "-h" in argv:
        print(__doc__ + "\nDefault config (override any key with key=value):\n\n" + config_to_yaml(default_config()))
        return
    cfg = parse_config(argv)
    check_config(cfg)

    # ------------------------------------------------------------------ engine and data
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=(f"[rank {rank}] " if world_size > 1 else "") + "%(levelname)s %(message)s",
    )
    train_ds, valid_ds = build_datasets(cfg)
    collate = Collate.from_config(cfg)
    engine = make_engine(cfg)
    device = engine.device
    seed_all(cfg.seed + engine.rank)  # rank 0 is seeded like the reference; other ranks draw their own z
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.set_flush_denormal(True)  # CPU: a fresh G's outputs (~1e-7) make subnormal floats in D, 10x slower
    sampler = DistributedSampler(
        train_ds, num_replicas=engine.world_size, rank=engine.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    loader_rng = torch.Generator()  # worker seeds per (epoch, rank), independent of the training RNG
    loader = DataLoader(
        train_ds,
        cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=device.type == "cuda",
        generator=loader_rng,
        worker_init_fn=ignore_stop_signals,
    )
    if len(loader) == 0:
        raise ConfigError(
            f"{len(train_ds)} training items give no full batch of batch_size={cfg.batch_size} "
            f"per rank ({engine.world_size} ranks); lower batch_size or add data"
        )

    # ------------------------------------------------------------------ run folder, models, resume, logs, loop
    with Harness(
        cfg.checkpoint_path,
        cfg.resume_checkpoint,
        cfg.overwrite,
        main=engine.is_main,
        keep_last=cfg.keep_last_checkpoints,
        max_nonfinite=cfg.max_nonfinite_steps,
    ) as harness:
        try:
            loop = build(cfg, engine, harness, train_ds)
            with open_logs(cfg, engine, valid_ds, collate) as (loop.writer, loop.validation):
                log.info(
                    "engine=%s precision=%s device=%s world_size=%d; G %d params, D %d params; %d batches per epoch",
                    cfg.engine,
                    engine.precision,
                    device,
                    engine.world_size,
                    *(sum(p.numel() for p in m.module.parameters()) for m in (loop.G, loop.D)),
                    len(loader),
                )
                with harness.stop_signals():
                    train(loop, sampler, loader_rng, loader)
        finally:
            engine.close()


@dataclass
class Loop:
    """What the training loop works with: config, engine, the wrapped G and D (density/engine.py Trainables),
    the EMA G, FeatureNorm, TrainState, Harness, and on the main rank the tensorboard writer and validation."""

    cfg: object
    engine: object
    G: object
    D: object
    g_ema: torch.nn.Module
    norm: FeatureNorm
    state: TrainState
    harness: Harness
    writer: object = None
    validation: object = None


def build(cfg, engine, harness, train_ds):
    """Models, optimisers, FeatureNorm and TrainState: from the checkpoint rank 0 resumes, else from scratch with
    the weights of init_checkpoint when given."""
    resume = engine.all_gather_object(str(harness.run.resume or "") if harness.run else "")[0]  # rank 0 decides
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
        norm = FeatureNorm.fit(train_ds) if cfg.normalize_features else FeatureNorm()
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
    return Loop(cfg, engine, G, D, g_ema, norm, state, harness)


@contextlib.contextmanager
def open_logs(cfg, engine, valid_ds, collate):
    """Main rank: -> (tensorboard writer, validation dict or None), the writer closed on exit; (None, None) elsewhere.

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
            validation = {
                "loader": loader,
                "real_stats": real_statistics(valid_ds, encode),
                "encode": encode,
                "audio": audio,
            }
        else:
            log.warning(
                "%d validation items make no full batch of %d: validation is off", len(valid_ds), cfg.batch_size
            )
        yield writer, validation
    finally:
        writer.close()


def train(loop, sampler, loader_rng, loader):
    """Epochs of steps until n_epochs, max_steps or a stop signal; a bad data file met on the way is named after
    a checkpoint of the steps done (one process)."""
    cfg, engine, state = loop.cfg, loop.engine, loop.state
    logger = StepLogger(cfg, loop.writer, loop.G, loop.D, engine.device, state.steps) if engine.is_main else None
    batches, start_epoch = None, state.epoch
    try:
        for epoch in range(start_epoch, cfg.n_epochs):
            sampler.set_epoch(epoch)
            loader_rng.manual_seed(cfg.seed + epoch * engine.world_size + engine.rank)
            batches = iter(loader)
            first = state.batch_index if epoch == start_epoch else 0
            for _ in range(first):  # replay the data position of a resumed epoch ...
                next(batches)
            if state.rng is not None:  # ... then the generators, so the next batch is drawn exactly as before
                ckpt.set_rng_state(state.rng)
                state.rng = None
            state.epoch, state.batch_index = epoch, first
            with tqdm(
                total=len(loader), initial=first, desc=f"epoch {epoch}", unit="batch", disable=not engine.is_main
            ) as pbar:
                for i, (real, _, _, z) in enumerate(batches, start=first):
                    save_best = train_step(loop, real, z, i, pbar, logger)
                    if end_of_step(
                        loop, save_best=save_best, last_batch=epoch == cfg.n_epochs - 1 and i == len(loader) - 1
                    ):
                        return
    except DatasetError as e:  # a bad file met mid-run: keep the steps since the last checkpoint, then stop
        message = str(e).strip().splitlines()[-1].split("DatasetError: ", 1)[-1]  # a worker's error is a traceback
        if engine.world_size == 1 and state.steps > 0 and state.steps - 1 != loop.harness.saved_step:
            path = loop.harness.save_periodic(checkpoint_dict(loop, [ckpt.rng_state()]), state.steps - 1, keep_last=0)
            message += f"; checkpoint written: {path}"
        raise DatasetError(f"{message} (fix or delete that file, then resume with resume_checkpoint=auto)") from e
    finally:
        stop_workers(batches)  # now, not at interpreter exit, where a live worker could block it forever


def train_step(loop, real, z, batch_index, pbar, logger):
    """One D or G step on a batch (reference note 29), then logging, the EMA generator and validation (main rank).
    -> whether this step's validation FAD is the best so far."""
    cfg, engine, state, step = loop.cfg, loop.engine, loop.state, loop.state.steps
    real, z = loop.norm.normalize(real.to(engine.device, non_blocking=True)), z.to(engine.device, non_blocking=True)
    phase = next_phase(engine, state)
    set_lrs(cfg, step, loop.G.optimizer, loop.D.optimizer)
    grad_norms = {} if engine.is_main and step % cfg.grad_summary_interval == 0 else None
    if phase == "D":
        stats = training.d_step(
            cfg, engine, loop.G, loop.D, state.ada, real, z, steps=step, batch_index=batch_index, grad_norms=grad_norms
        )
    else:
        stats = training.g_step(cfg, engine, loop.G, loop.D, state.ada, real, z, steps=step, grad_norms=grad_norms)
    loop.harness.check_finite(state.record(stats, cfg.update_ratio), step)
    pbar.update(1)
    if not engine.is_main:
        return False
    if step > LOG_AFTER:
        logger(state, grad_norms, pbar)
    if step > 0 and step % (cfg.ema_every or cfg.checkpoint_interval) == 0:
        update_ema(loop.g_ema, loop.G.module, cfg.rp_w_cfg.g_ema_weight)
    if loop.validation is not None and step > 0 and step % cfg.validation_interval == 0:
        fad_value = validate(
            cfg,
            loop.G.module,
            loop.D.module,
            loop.validation["loader"],
            loop.validation["real_stats"],
            loop.writer,
            step,
            engine.device,
            loop.norm,
            loop.validation["encode"],
            loop.validation["audio"],
        )
        log.info("step %d: validation FAD %.4f (best %.4f)", step, fad_value, state.best_fad)
        if fad_value < state.best_fad:
            state.best_fad = fad_value
            return True
    return False


def end_of_step(loop, *, save_best, last_batch):
    """Finish the step: agree on stopping across ranks, write the periodic, final and best checkpoints.
    -> whether training ends here (a stop signal, max_steps, or the last batch of the last epoch)."""
    cfg, engine, state, harness, step = loop.cfg, loop.engine, loop.state, loop.harness, loop.state.steps
    flags = torch.tensor([float(harness.stop_requested), float(save_best)])
    if engine.world_size > 1:  # every rank stops alike and joins the RNG-state gather below
        flags = engine.all_sum(flags.to(engine.device))
    stop, save_best = (bool(v) for v in flags.tolist())
    final = stop or (cfg.max_steps and step + 1 >= cfg.max_steps) or last_batch
    periodic = step > 0 and step % cfg.checkpoint_interval == 0
    state.steps += 1
    state.batch_index += 1
    if periodic or final or save_best:
        rng_states = engine.all_gather_object(ckpt.rng_state())  # per rank, to resume
        checkpoint = checkpoint_dict(loop, rng_states) if engine.is_main else None
        if periodic or final:
            path = harness.save_periodic(checkpoint, step)
            if engine.is_main:
                log.info("step %d: saved %s", step, path)
        if save_best:
            harness.save(checkpoint, "ckpt_best_fad.pt")
    if stop:
        log.warning(
            "stopped by signal after step %d; resume with resume_checkpoint=%s",
            step,
            ckpt.periodic_path(cfg.checkpoint_path, step),
        )
    return final


def checkpoint_dict(loop, rng_states):
    """The checkpoint (density/checkpoint.py KEYS) after the last finished step."""
    return ckpt.training_checkpoint(
        G=loop.G,
        D=loop.D,
        g_ema=loop.g_ema,
        train_state=loop.state.state_dict(rng_states),
        cfg_yaml=config_to_yaml(loop.cfg),
        run_id=loop.harness.run.run_id,
        feature_norm=loop.norm.to_checkpoint(),
    )


if __name__ == "__main__":
    cli.command(main)
