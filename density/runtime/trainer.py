"""The skeleton the three training commands share (train_asgan.py, train_vocoder.py, train_classifier.py).

    from density.runtime import trainer

    def main(argv):
        argv = trainer.without_launcher_arguments(argv)       # deepspeed's --local_rank=N
        if trainer.show_help(argv, __doc__, TrainConfig):     # --help / -h: the doc and every key's default
            return None
        cfg = parse_config(argv)                              # ranges: density.config.check_ranges
        trainer.log_per_rank()
        ... data, engine ...
        with trainer.open_harness(cfg, main=engine.is_main) as harness:  # run folder, lock, resume (run.py)
            loop = build(cfg, engine, harness, ...)           # resumes from trainer.agreed_resume(harness, engine)
            if trainer.already_finished(loop, loop.position, steps_per_epoch=..., limit=...):
                return finish(loop)                           # resumed at its end: missing end outputs only
            with harness.stop_signals():
                trainer.run_epochs(loop, loop.position, steps_per_epoch=..., show_progress=engine.is_main)

A trainer's loop object is an `EpochLoop`: which batches an epoch has, what a step does, and what follows each
step (logging, validation, stopping on every rank alike, checkpoints). `run_epochs` drives it and owns exact
resume: a resumed epoch starts at its next batch, and the RNG states saved with the checkpoint are restored where
they were saved, so that the run continues as if it had never stopped. Imports no model code.
"""

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from density.runtime import checkpoint as ckpt
from density.runtime.engine import DeepSpeedEngine, DeepSpeedTrainable, TorchEngine, TorchTrainable
from density.runtime.run import Harness, seed_all

Engine = TorchEngine | DeepSpeedEngine
Trainable = TorchTrainable | DeepSpeedTrainable
LAUNCHER_ARGUMENT = "--local_rank"  # added by the deepspeed launcher


# ---------------------------------------------------------------- the command line and logs


def without_launcher_arguments(argv):
    """The command's own arguments: argv without the `--local_rank=N` a launcher adds."""
    return [a for a in argv if not a.startswith(LAUNCHER_ARGUMENT)]


def show_help(argv, doc, schema):
    """Print the command's doc and the defaults of its config `schema` (a dataclass) as YAML when argv asks for
    help -> whether it did."""
    if "--help" not in argv and "-h" not in argv:
        return False
    print(
        doc
        + "\nDefault config (override any key with key=value):\n\n"
        + OmegaConf.to_yaml(OmegaConf.structured(schema))
    )
    return True


def log_per_rank():
    """Log INFO on rank 0 and WARNING on the others, each line prefixed with its rank when there are several
    (ranks as torchrun and deepspeed set them in RANK and WORLD_SIZE)."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=(f"[rank {rank}] " if world_size > 1 else "") + "%(levelname)s %(message)s",
    )


def log_stopped(log, step, folder):
    """The warning that a stop signal ended training after `step`, naming the checkpoint to resume from."""
    log.warning(
        "stopped by signal after step %d; resume with resume_checkpoint=%s", step, ckpt.periodic_path(folder, step)
    )


# ---------------------------------------------------------------- the run folder and resuming


def open_harness(cfg, *, main=True):
    """The Harness (run.py) of a config with checkpoint_path, resume_checkpoint, overwrite and
    keep_last_checkpoints (and max_nonfinite_steps when the trainer has that key)."""
    return Harness(
        cfg.checkpoint_path,
        cfg.resume_checkpoint,
        cfg.overwrite,
        main=main,
        keep_last=cfg.keep_last_checkpoints,
        max_nonfinite=cfg.get("max_nonfinite_steps", 0),
    )


def agreed_resume(harness, engine=None):
    """The checkpoint to resume from ('' for a new run) as rank 0 chose it, on every rank."""
    mine = str(harness.run.resume or "") if harness.run else ""
    return engine.all_gather_object(mine)[0] if engine is not None else mine


def rank_rng(rng_states, *, rank, world_size, seed, steps):
    """This rank's entry of a checkpoint's per-rank RNG states; a rank the writing run did not have is seeded
    afresh (distinct from the streams it drew before) and gets None."""
    if rank < len(rng_states):
        return rng_states[rank]
    seed_all(seed + rank + steps * world_size)
    return None


def any_rank(engine, *flags):
    """Whether any rank raised each flag (one all-reduce when there are several ranks) -> tuple of bools.
    Every rank must call it at the same step."""
    if engine is None or engine.world_size == 1:
        return tuple(bool(f) for f in flags)
    summed = engine.all_sum(torch.tensor([float(f) for f in flags], device=engine.device))
    return tuple(bool(v) for v in summed.tolist())


def on_interval(step, interval):
    """Whether step (0-based) is one of every `interval` steps after the first (checkpoints, validation)."""
    return step > 0 and step % interval == 0


# ---------------------------------------------------------------- the epoch loop


@dataclass
class Position:
    """Where a run stands: steps finished (the global index of the next step), the next batch's epoch and index
    within it, and this rank's RNG states to restore once a resumed run has reached that batch (else None)."""

    steps: int = 0
    epoch: int = 0
    batch_index: int = 0
    rng: Any = None

    @classmethod
    def after(cls, checkpoint, rng=None):
        """The position after the step a checkpoint was written at (its 'steps', 'epoch' and 'batch_index')."""
        return cls(checkpoint["steps"] + 1, checkpoint["epoch"], checkpoint["batch_index"], rng)

    def checkpoint_entries(self):
        """The checkpoint's 'steps' (the last finished step), 'epoch' and 'batch_index' (the next batch)."""
        return {"steps": self.steps - 1, "epoch": self.epoch, "batch_index": self.batch_index}


LOOP_KEYS = ("steps", "epoch", "batch_index", "best", "rng_state", "cfg_yaml")  # the entries of loop_entries


def loop_entries(position, *, best, rng_state, cfg):
    """The checkpoint entries (LOOP_KEYS) the vocoder and classifier trainers write alike: the position's steps,
    epoch and batch_index, the best validation scores, the RNG state(s) to restore and the config as YAML."""
    return {**position.checkpoint_entries(), "best": best, "rng_state": rng_state, "cfg_yaml": OmegaConf.to_yaml(cfg)}


class EpochLoop(Protocol):
    """What `run_epochs` drives: a trainer's loop state and its steps."""

    def more_epochs(self) -> bool:
        """Whether another epoch starts (asked before each one): false once the run is at its end (max_steps
        reached, or its epochs done), so that a run resumed there trains nothing."""

    def epoch_batches(self, epoch: int, first: int) -> Iterable:
        """The batches of `epoch` from its batch `first` on, in the order they were (or will be) drawn."""

    def step(self, batch) -> Any:
        """One training step on a batch -> what end_of_step needs of it."""

    def end_of_step(self, outcome, pbar: tqdm) -> bool:
        """Logging, validation, checkpoints; counts the step in the position (steps and batch_index + 1) before
        writing a checkpoint -> whether training ends here (on every rank alike)."""


def next_batch_position(position, steps_per_epoch):
    """Move a position that stands after an epoch's last batch (a checkpoint written there) to the next epoch's
    first batch."""
    if position.batch_index >= steps_per_epoch:
        position.epoch, position.batch_index = position.epoch + 1, 0


def already_finished(loop: EpochLoop, position, *, steps_per_epoch, limit, main=True):
    """Whether a run resumed at `position` has no step left (loop.more_epochs() is false: max_steps reached, or its
    epochs done). Then a trainer trains nothing and writes no checkpoint or log; it only writes an end-of-run
    output that is missing (a stop or a kill came between the last checkpoint and it). The main rank prints
    'already finished at step N', N being the step of the checkpoint resumed from (the run's last step).
    limit: the setting that ended the run, as typed (e.g. 'max_steps=20'), for the message."""
    next_batch_position(position, steps_per_epoch)
    if loop.more_epochs():
        return False
    if main:
        key = limit.split("=", 1)[0]
        print(
            f"already finished at step {position.steps - 1} ({limit}): nothing to train; resume with a larger "
            f"{key} to train on"
        )
    return True


def run_epochs(loop: EpochLoop, position, *, steps_per_epoch, show_progress=True):
    """Epochs of loop.step until loop.end_of_step says the last step is done, from `position` (a Position, or an
    object with the same four fields) on.

    A resumed run continues exactly: its epoch starts at the next batch (loop.epoch_batches draws the ones before
    it again), and the RNG states saved with the checkpoint are restored where the checkpoint was written: before
    the next epoch's batches are drawn when it ended an epoch, else once the batches before the next one are.
    """
    next_batch_position(position, steps_per_epoch)  # a checkpoint written after an epoch's last batch
    while loop.more_epochs():
        first = position.batch_index
        if first == 0:
            restore_rng(position)
        batches = loop.epoch_batches(position.epoch, first)
        restore_rng(position)
        with tqdm(
            total=steps_per_epoch,
            initial=first,
            desc=f"epoch {position.epoch}",
            unit="batch",
            disable=not show_progress,
        ) as pbar:
            for batch in batches:
                outcome = loop.step(batch)
                pbar.update(1)
                if loop.end_of_step(outcome, pbar):
                    return
        position.epoch, position.batch_index = position.epoch + 1, 0


def restore_rng(position):
    """Put back the RNG states a resumed position carries, once."""
    if position.rng is not None:
        ckpt.set_rng_state(position.rng)
        position.rng = None
