"""What every trainer shares: run folders (one run per folder, the resume conventions, a heartbeat lock, pruning),
seeding, stopping cleanly on SIGINT/SIGTERM, and `Harness`, which puts them together for a training loop
(density/runtime/trainer.py builds the trainers' common skeleton on it).

    with Harness(checkpoint_path, resume_checkpoint, overwrite, keep_last=2) as harness:  # opens the run folder
        ... load harness.run.resume if not None; store harness.run.run_id in every checkpoint as 'run_id' ...
        with harness.stop_signals():
            for each step: ...; harness.check_finite(finite, step)
                harness.save_periodic(state, step)          # finite weights only; atomic, then prunes; also on a
                                                            # stop or at the end
                if harness.stop_requested: ...checkpoint and return

Underneath: run = open_run(checkpoint_path, resume_checkpoint, overwrite); run.prune(keep, written_path); run.close().

Rules:
- resume_checkpoint='' starts a new run; a folder that already holds checkpoints is refused unless
  overwrite=true, which deletes them first.
- resume_checkpoint='auto' continues from the newest readable periodic checkpoint in the folder (by the step in
  its name), or starts a new run in a folder without one: what a requeued job should use.
- resume_checkpoint=<file> must exist. It continues that checkpoint's run (its `run_id`; a checkpoint without
  one, e.g. the reference's, starts a new identity). Checkpoints in the folder of another run, or of this run
  but newer than the resumed one (a roll-back), would be overwritten: refused unless overwrite=true, which
  deletes them.
- `run.lock` (host, pid, heartbeat time, run_id) keeps a second live run out. It is refreshed every
  HEARTBEAT_S by a thread and counts as stale when its heartbeat is older than STALE_S, or on the same host
  when its pid is gone, so a job requeued on another node takes over the folder of a dead one.
- Pruning deletes only periodic checkpoints whose run_id is this run's, never the newest of them, never the one
  just written, never the best-FAD file. Files it cannot read or attribute are left alone.
- Only files named as a trainer names them (PERIODIC, `others`) are checkpoints: a cache such as
  `ckpt_00000019.pt.w_avg-<hash>-n100.pt` next to them is never resumed from, pruned or deleted.
- A folder that cannot be created or written is a WriteError (density/runtime/fileio.py) before anything runs.
- Harness writes a checkpoint only from finite weights (`require_finite`): TrainingAborted names the step.
"""

import contextlib
import json
import logging
import os
import random
import re
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from density.runtime import checkpoint as ckpt
from density.runtime.fileio import FILE_MODE, WriteError, is_temporary, write_text

log = logging.getLogger(__name__)

AUTO = "auto"
LOCK_NAME = "run.lock"
HEARTBEAT_S = 30
STALE_S = 300  # a lock not refreshed for this long belongs to a dead run (10 missed heartbeats)
PERIODIC = re.compile(r"ckpt_(\d{8,})\.pt")


def periodic_checkpoints(run_dir):
    """A training run folder's periodic checkpoints ckpt_<steps>.pt, oldest first (not the caches that generate.py
    and the studio write next to them, ckpt_<steps>.pt.w_avg-...pt)."""
    return sorted(p for p in Path(run_dir).glob("ckpt_*.pt") if PERIODIC.fullmatch(p.name))


BEST_FAD = "ckpt_best_fad.pt"  # train_asgan.py's best checkpoint, never pruned
OTHERS = (BEST_FAD,)


class RunError(ValueError):
    """A run folder that this run may not use as asked; the message says why and what to do."""


def read_run_id(path):
    """-> (readable, run_id or None) of a checkpoint file, read lazily (mmap) and without unpickling code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False, None
    if not isinstance(state, dict):
        return False, None
    return True, state.get("run_id")


def _host():
    return socket.gethostname()


class RunLock:
    """`run.lock` in a run folder: JSON {host, pid, heartbeat, run_id, token}, refreshed by a daemon thread."""

    def __init__(self, path, heartbeat_s=HEARTBEAT_S, stale_s=STALE_S):
        self.path, self.heartbeat_s, self.stale_s = Path(path), heartbeat_s, stale_s
        self.info = {"host": _host(), "pid": os.getpid(), "heartbeat": 0.0, "run_id": None, "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread = None

    def holder(self):
        """The lock's JSON, or None when missing; {} when unreadable (being written, or garbage)."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def is_stale(self, holder):
        if not holder:  # unreadable: stale once nobody has touched it for stale_s
            try:
                return time.time() - self.path.stat().st_mtime > self.stale_s
            except FileNotFoundError:
                return True
        if time.time() - holder.get("heartbeat", 0) > self.stale_s:
            return True
        if holder.get("host") == _host():
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, KeyError, ValueError, TypeError):
                return False
        return False

    def acquire(self):
        for _ in range(3):
            self.info["heartbeat"] = time.time()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            except FileExistsError:
                holder = self.holder()
                if not self.is_stale(holder):
                    h = holder or {}
                    age = time.time() - h.get("heartbeat", time.time())
                    raise RunError(
                        f"{self.path.parent} is in use by another live run (pid {h.get('pid', '?')} on "
                        f"{h.get('host', '?')}, heartbeat {age:.0f} s ago): wait for it to end or choose another "
                        f"checkpoint_path. {self.path} counts as stale {self.stale_s} s after its last heartbeat, "
                        "or at once on the same host when its pid is gone"
                    ) from None
                log.warning("%s: taking over the stale lock of %s", self.path, holder or "an unreadable lock file")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return self
        raise RunError(f"{self.path}: other runs keep taking this folder; start one run per checkpoint_path")

    def update(self, **info):
        self.info.update(info, heartbeat=time.time())
        if (self.holder() or {}).get("token") == self.info["token"]:
            write_text(self.path, json.dumps(self.info))

    def _beat(self):
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.update()
            except OSError as e:  # a full disk or a network blip must not kill training; the next beat retries
                log.warning("%s: heartbeat not written: %s", self.path, e)

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (self.holder() or {}).get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)


class Run:
    """An opened run folder (see the module doc): `resume` (Path or None), `run_id`, `prune`, `close`."""

    def __init__(self, folder, run_id, resume, lock, created, own):
        self.folder, self.run_id, self.resume, self.lock, self.created = folder, run_id, resume, lock, created
        self._own = own  # step -> periodic checkpoint of this run

    def prune(self, keep, written):
        """Record the periodic checkpoint just `written`; delete this run's older ones beyond the newest `keep`
        (keep <= 0: delete nothing)."""
        written = Path(written)
        self._own[int(PERIODIC.fullmatch(written.name)[1])] = written
        if keep <= 0:
            return
        for step in sorted(self._own)[:-keep]:
            if self._own[step] != written:
                self._own.pop(step).unlink(missing_ok=True)

    def close(self):
        """Release the lock; a folder this run created and left empty is removed."""
        self.lock.release()
        if self.created and not any(self.folder.iterdir()):
            self.folder.rmdir()


def _checkpoints(folder, pattern, others):
    """-> ({step: path} of periodic checkpoints, [other checkpoint files present])."""
    periodic = {}
    for p in folder.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_file():
            periodic[int(m[1])] = p
    return periodic, [folder / n for n in others if (folder / n).is_file()]


def _choose(folder, resume_checkpoint, periodic, others, overwrite):
    """-> (resume path or None, run_id or None, files to delete before the run starts)."""
    everything = [periodic[s] for s in sorted(periodic)] + others
    if not resume_checkpoint:
        if everything and not overwrite:
            raise RunError(
                f"checkpoint_path={folder} already holds checkpoints ({', '.join(p.name for p in everything[-3:])}"
                f"{', ...' if len(everything) > 3 else ''}) and resume_checkpoint is empty: use "
                "resume_checkpoint=auto to continue from the newest, resume_checkpoint=<file> for another one, "
                "overwrite=true to delete them and start over, or another checkpoint_path"
            )
        return None, None, everything
    if resume_checkpoint == AUTO:
        for step in sorted(periodic, reverse=True):
            readable, run_id = read_run_id(periodic[step])
            if readable:
                resume = periodic[step]
                break
            log.warning("%s is unreadable (truncated or corrupt): trying an older checkpoint", periodic[step])
        else:
            log.info("resume_checkpoint=auto: no readable checkpoint in %s; starting a new run", folder)
            return None, None, []
    else:
        resume = Path(resume_checkpoint)
        if not resume.is_file():
            raise RunError(
                f"resume_checkpoint={resume_checkpoint} does not exist: give an existing checkpoint, "
                f"resume_checkpoint=auto for the newest in {folder}, or leave it empty for a new run"
            )
        _, run_id = read_run_id(resume)  # an unreadable file is named by the trainer's loader
    step = PERIODIC.fullmatch(resume.name)
    step = int(step[1]) if step else None
    conflicts = []
    for p in everything:
        if p.resolve() == resume.resolve():
            continue
        readable, other_id = read_run_id(p)
        if not readable:
            log.warning("%s is unreadable: left alone", p)
        elif (
            other_id is None
            or other_id != run_id
            or (p in periodic.values() and step is not None and int(PERIODIC.fullmatch(p.name)[1]) > step)
        ):
            conflicts.append(p)
    if conflicts and not overwrite:
        raise RunError(
            f"checkpoint_path={folder} holds checkpoints that resuming {resume} would overwrite (of another run, or "
            f"newer ones: {', '.join(p.name for p in conflicts[:3])}{', ...' if len(conflicts) > 3 else ''}): "
            "use resume_checkpoint=auto to continue from the newest, another checkpoint_path, or overwrite=true to "
            "delete them and resume from this checkpoint"
        )
    return resume, run_id, conflicts


def open_run(
    checkpoint_path,
    resume_checkpoint,
    overwrite,
    *,
    pattern=PERIODIC,
    others=OTHERS,
    heartbeat_s=HEARTBEAT_S,
    stale_s=STALE_S,
):
    """Lock `checkpoint_path` (created) for this run and decide what it resumes from (module doc) -> Run.

    `pattern` (one group: the step) and `others` name the trainer's checkpoint files. RunError explains a refusal.
    """
    folder = Path(checkpoint_path)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"checkpoint_path={folder} is a file; give a folder")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = RunLock(folder / LOCK_NAME, heartbeat_s, stale_s).acquire()
    except OSError as e:  # a read-only folder or file system, no permission, a file where a parent folder should be
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise WriteError(
            f"checkpoint_path={folder}: cannot write ({type(e).__name__}: {e}); give a checkpoint_path in a folder "
            "you can write to, or make this one writable, then run again"
        ) from e
    try:
        for p in folder.iterdir():  # the lock is ours: every temporary here is left over from a killed write
            if is_temporary(p):
                p.unlink(missing_ok=True)
        periodic, others_found = _checkpoints(folder, pattern, others)
        resume, run_id, delete = _choose(folder, resume_checkpoint, periodic, others_found, overwrite)
        for p in delete:
            log.warning("overwrite=true: deleting %s", p)
            p.unlink()
        run_id = run_id or uuid.uuid4().hex
        own = {s: p for s, p in periodic.items() if p not in delete and p.is_file() and read_run_id(p)[1] == run_id}
        lock.update(run_id=run_id)
    except BaseException:
        lock.release()
        if created:
            folder.rmdir()
        raise
    return Run(folder, run_id, resume, lock, created, own)


# ---------------------------------------------------------------- seeding and stop signals
# A stop signal is only recorded (`catch_stop_signals`); the training loop finishes its step, writes a checkpoint
# and returns. DataLoader workers ignore the signals (`ignore_stop_signals`), so a signal sent to the whole
# process group (terminal, SLURM, `kill -- -PGID`) does not kill them under the main process.

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_stop_signals(_worker_id):
    """DataLoader worker init: leave SIGINT/SIGTERM to the main process, which finishes the step, checkpoints and
    then stops the workers (PyTorch's own worker SIGTERM handler would kill them first, e.g. under SLURM)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def seed_all(seed):
    """Seed python `random`, numpy and torch (CPU and CUDA)."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


def catch_stop_signals():
    """Record SIGINT/SIGTERM instead of stopping -> (list that receives the signal numbers, previous handlers)."""
    received = []
    previous = {s: signal.signal(s, lambda signum, _: received.append(signum)) for s in STOP_SIGNALS}
    return received, previous


def restore_signals(previous):
    """Put back the handlers `catch_stop_signals` replaced."""
    for s, handler in previous.items():
        signal.signal(s, handler)


# ---------------------------------------------------------------- the harness of a training loop


class TrainingAborted(RuntimeError):
    """Too many consecutive non-finite steps, or weights that are no longer finite."""


def nonfinite_tensors(state, prefix=""):
    """Dotted names of the floating-point tensors holding inf or NaN in a checkpoint state (nested dicts, lists and
    tuples; other values are not looked at)."""
    if isinstance(state, torch.Tensor):
        return [prefix] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [name for key, value in items for name in nonfinite_tensors(value, f"{prefix}{'.' if prefix else ''}{key}")]


class Harness:
    """A training run's folder, checkpoints, stop signals and non-finite guard, for any trainer.

    main: whether this rank owns the folder (opens the run, writes checkpoints); other ranks only keep count.
    keep_last: periodic checkpoints kept (0: all); none is pruned during a streak of non-finite steps, so the
    checkpoint an abort names survives. max_nonfinite: consecutive non-finite steps that abort (0: no guard).
    """

    def __init__(self, checkpoint_path, resume_checkpoint, overwrite, *, main=True, keep_last=0, max_nonfinite=0):
        self.folder, self.main = Path(checkpoint_path), main
        self.keep_last, self.max_nonfinite = keep_last, max_nonfinite
        self._open = (resume_checkpoint, overwrite)
        self.run, self._received, self._previous = None, [], None
        self.nonfinite, self.last_finite, self.saved_step = 0, None, None

    def __enter__(self):
        if self.main:
            self.run = open_run(self.folder, *self._open)
        return self

    def __exit__(self, *exc):
        if self.run is not None:
            self.run.close()

    @contextlib.contextmanager
    def stop_signals(self):
        """Record SIGINT/SIGTERM inside the block (see `stop_requested`) instead of stopping."""
        self._received, previous = catch_stop_signals()
        try:
            yield
        finally:
            restore_signals(previous)

    @property
    def stop_requested(self):
        return bool(self._received)

    def check_finite(self, finite, step):
        """Count a step's outcome; TrainingAborted after max_nonfinite non-finite steps in a row."""
        self.nonfinite = 0 if finite else self.nonfinite + 1
        if self.max_nonfinite and self.nonfinite >= self.max_nonfinite:
            raise TrainingAborted(
                f"{self.nonfinite} consecutive non-finite steps up to step {step}: training aborted. Last "
                f"checkpoint written before them: {self.last_finite or 'none'} (resume from it with "
                "overwrite=true, which deletes the newer ones, and a lower lr or grad_clip)"
            )

    def require_finite(self, state, step):
        """TrainingAborted naming the step and the tensors when `state` (a checkpoint or a state dict) holds inf or
        NaN: a checkpoint is only ever written from finite weights."""
        bad = nonfinite_tensors(state)
        if bad:
            raise TrainingAborted(
                f"the weights are not finite after step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}):"
                f" training stopped, nothing written. Last checkpoint with finite weights: {self.last_finite or 'none'}"
                " (resume from it with overwrite=true, which deletes the newer ones, and a lower lr or grad_clip)"
            )

    def save_periodic(self, state, step, keep_last=None):
        """Write ckpt_<step>.pt atomically (main rank; `state` may be None elsewhere) and prune -> its path.
        TrainingAborted instead when the state is not finite (`require_finite`)."""
        path = ckpt.periodic_path(self.folder, step)
        if self.main:
            self.require_finite(state, step)
            ckpt.save(state, path)
            keep = self.keep_last if keep_last is None else keep_last
            self.run.prune(keep if self.nonfinite == 0 else 0, path)
        self.saved_step = step
        if self.nonfinite == 0:
            self.last_finite = path
        return path

    def save(self, state, name, step):
        """Write a non-periodic checkpoint of `step` (e.g. the best one) atomically into the run folder (main rank);
        TrainingAborted instead when the state is not finite (`require_finite`)."""
        if self.main:
            self.require_finite(state, step)
            ckpt.save(state, self.folder / name)
