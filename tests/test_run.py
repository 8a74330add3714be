"""Run folders (density/runtime/run.py): resume conventions, refusals, the heartbeat lock and pruning; the epoch loop
of density/runtime/trainer.py: a resumed run continues exactly."""

import errno
import json
import math
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from density.runtime import checkpoint as ckpt
from density.runtime.fileio import WriteError
from density.runtime.run import LOCK_NAME, Harness, RunError, TrainingAborted, open_run
from density.runtime.trainer import Position, already_finished, run_epochs


def put(folder, name, run_id=None):
    """A stand-in checkpoint: open_run reads only `run_id`."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"steps": 0} if run_id is None else {"steps": 0, "run_id": run_id}, folder / name)
    return folder / name


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_missing_resume_checkpoint_is_an_error_and_touches_nothing(tmp_path):
    put(tmp_path / "run", "ckpt_00000011.pt", "a")
    with pytest.raises(RunError, match=r"resume_checkpoint=.*nope\.pt does not exist"):
        open_run(tmp_path / "run", str(tmp_path / "nope.pt"), False)
    assert names(tmp_path / "run") == ["ckpt_00000011.pt"]
    with pytest.raises(RunError, match="does not exist"):
        open_run(tmp_path / "new", str(tmp_path / "nope.pt"), False)
    assert not (tmp_path / "new").exists()


def test_new_run_into_a_folder_with_checkpoints_needs_auto_or_overwrite(tmp_path):
    run = tmp_path / "run"
    for name in ("ckpt_00000003.pt", "ckpt_00000011.pt", "ckpt_best_fad.pt"):
        put(run, name, "a")
    with pytest.raises(RunError, match=r"already holds checkpoints.*ckpt_00000011\.pt.*resume_checkpoint=auto"):
        open_run(run, "", False)
    assert names(run) == ["ckpt_00000003.pt", "ckpt_00000011.pt", "ckpt_best_fad.pt"]
    r = open_run(run, "auto", False)
    assert r.resume == run / "ckpt_00000011.pt" and r.run_id == "a"
    r.close()
    r = open_run(run, "", True)
    assert r.resume is None and r.run_id != "a" and names(run) == [LOCK_NAME]
    r.close()
    assert names(run) == []


def test_auto_skips_unreadable_and_starts_fresh_in_an_empty_folder(tmp_path):
    run = tmp_path / "run"
    put(run, "ckpt_00000009.pt", "a")
    (run / "ckpt_00000010.pt").write_bytes(b"PK\x03\x04 cut off")  # numerically newest, by name order too
    r = open_run(run, "auto", False)
    assert r.resume == run / "ckpt_00000009.pt" and r.run_id == "a"
    r.close()
    r = open_run(tmp_path / "requeued", "auto", False)
    assert r.resume is None and len(r.run_id) == 32
    r.close()
    assert not (tmp_path / "requeued").exists()  # created and left empty: removed


def test_resume_into_a_folder_of_another_run_or_with_newer_checkpoints_is_refused(tmp_path):
    run = tmp_path / "run"
    put(run, "ckpt_00000020.pt", "other")
    put(run, "ckpt_best_fad.pt", "other")
    mine = put(tmp_path / "mine", "ckpt_00000010.pt", "a")
    with pytest.raises(RunError, match=r"of another run, or newer ones: ckpt_00000020\.pt, ckpt_best_fad\.pt"):
        open_run(run, str(mine), False)
    reference = put(tmp_path, "reference.pt")  # no run_id: a run of its own
    with pytest.raises(RunError, match="overwrite=true"):
        open_run(run, str(reference), False)
    assert names(run) == ["ckpt_00000020.pt", "ckpt_best_fad.pt"]
    # a roll-back within one run: the newer checkpoints of that run would be overwritten
    put(run, "ckpt_00000005.pt", "other")
    with pytest.raises(RunError, match=r"ckpt_00000020\.pt"):
        open_run(run, str(run / "ckpt_00000005.pt"), False)
    r = open_run(run, str(run / "ckpt_00000005.pt"), True)
    assert r.run_id == "other" and names(run) == ["ckpt_00000005.pt", "ckpt_best_fad.pt", LOCK_NAME]
    r.close()
    r = open_run(run, str(run / "ckpt_00000005.pt"), False)  # continuing the newest: nothing to refuse
    r.close()


def test_pruning_deletes_only_this_runs_older_periodic_checkpoints_by_step(tmp_path):
    run = tmp_path / "run"
    put(run, "ckpt_00000007.pt", "a")
    put(run, "ckpt_00000008.pt", "a")
    put(run, "ckpt_00000050.pt", "b")  # another run's, higher-numbered
    put(run, "ckpt_best_fad.pt", "a")
    (run / "ckpt_00000001.pt").write_bytes(b"garbage")  # unattributable
    r = open_run(run, str(run / "ckpt_00000008.pt"), True)  # the other run's file is deleted by overwrite ...
    assert not (run / "ckpt_00000050.pt").exists()
    put(run, "ckpt_00000050.pt", "b")  # ... so put it back, as if it arrived later
    for step in (9, 10, 100_000_000):  # 9 digits: after ckpt_00000010 by number, before it by name
        r.prune(2, put(run, f"ckpt_{step:08d}.pt", r.run_id))
    assert names(run) == [
        "ckpt_00000001.pt",
        "ckpt_00000010.pt",
        "ckpt_00000050.pt",
        "ckpt_100000000.pt",
        "ckpt_best_fad.pt",
        LOCK_NAME,
    ]
    r.prune(0, run / "ckpt_100000000.pt")  # keep <= 0: nothing deleted
    r.prune(1, put(run, "ckpt_00000004.pt", r.run_id))  # the file just written is never deleted
    assert (run / "ckpt_00000004.pt").exists() and (run / "ckpt_100000000.pt").exists()
    r.close()


def test_a_second_live_run_is_locked_out(tmp_path):
    first = open_run(tmp_path / "run", "", False)
    lock = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert (lock["host"], lock["pid"], lock["run_id"]) == (socket.gethostname(), os.getpid(), first.run_id)
    with pytest.raises(RunError, match=rf"in use by another live run \(pid {os.getpid()}"):
        open_run(tmp_path / "run", "auto", False)
    first.close()
    open_run(tmp_path / "run", "auto", False).close()


def test_heartbeat_is_refreshed(tmp_path):
    r = open_run(tmp_path / "run", "", False, heartbeat_s=0.05)
    beat = json.loads((tmp_path / "run" / LOCK_NAME).read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["heartbeat"] > beat
    r.close()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def write_lock(folder, host, pid, age):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"host": host, "pid": pid, "heartbeat": time.time() - age}))


def test_stale_locks_are_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(tmp_path / "a", socket.gethostname(), int(dead.stdout), age=1)  # this host, pid gone
    open_run(tmp_path / "a", "", False).close()
    write_lock(tmp_path / "b", "node-that-died", 1, age=1000)  # requeued on another node: old heartbeat
    open_run(tmp_path / "b", "", False).close()
    write_lock(tmp_path / "c", "node-still-running", 1, age=10)  # fresh heartbeat elsewhere: live
    with pytest.raises(RunError, match="in use by another live run .*node-still-running"):
        open_run(tmp_path / "c", "", False)


def test_temporaries_of_killed_writes_are_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".ckpt_00000005.pt.deadhost-1.abcd1234.tmp").write_bytes(b"half a checkpoint")
    (run / ".keep_me").write_text("not ours")
    open_run(run, "", False).close()
    assert names(run) == [".keep_me"]


class RandomSteps:
    """A stand-in trainer for run_epochs: 3 batches an epoch, each step draws a random number; a checkpoint (the
    position and the RNG states) is kept after every step, and training ends after `last` steps."""

    def __init__(self, position, last):
        self.position, self.last, self.seen, self.checkpoints = position, last, [], {}

    def more_epochs(self):
        return self.position.steps < self.last

    def epoch_batches(self, epoch, first):
        torch.rand(1)  # drawing an epoch's order moves the RNG, as a DataLoader may: a resume restores it after
        return [(epoch, b) for b in range(first, 3)]

    def step(self, batch):
        return (*batch, torch.rand(()).item())

    def end_of_step(self, outcome, pbar):
        self.seen.append(outcome)
        self.position.steps += 1
        self.position.batch_index += 1
        self.checkpoints[self.position.steps - 1] = dict(self.position.checkpoint_entries(), rng=ckpt.rng_state())
        return self.position.steps >= self.last


def test_run_epochs_resumes_mid_epoch_and_after_an_epoch_as_if_never_stopped():
    torch.manual_seed(0)
    straight = RandomSteps(Position(), last=8)
    run_epochs(straight, straight.position, steps_per_epoch=3, show_progress=False)
    assert [s[:2] for s in straight.seen] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    for step in (3, 2):  # mid-epoch (batch 1 of epoch 1 next), and after an epoch's last batch
        saved = straight.checkpoints[step]
        assert saved["batch_index"] == (1 if step == 3 else 3)
        torch.manual_seed(123)  # another process: other RNG states until the saved ones are restored
        resumed = RandomSteps(Position.after(saved, saved["rng"]), last=8)
        run_epochs(resumed, resumed.position, steps_per_epoch=3, show_progress=False)
        assert resumed.seen == straight.seen[step + 1 :]
        assert resumed.position == Position(steps=8, epoch=2, batch_index=2)
    done = RandomSteps(Position(steps=8), last=8)
    run_epochs(done, done.position, steps_per_epoch=3, show_progress=False)
    assert done.seen == []


def test_only_trainer_named_files_are_checkpoints(tmp_path):
    """The mean-w cache generate.py --truncation writes next to a checkpoint (ckpt_....pt.w_avg-<hash>-n<N>.pt) is
    neither resumed from (even when readable and numbered higher) nor deleted by overwrite=true."""
    run = tmp_path / "run"
    put(run, "ckpt_00000019.pt", "a")
    caches = [f"ckpt_{step:08d}.pt.w_avg-0123456789abcdef-n100.pt" for step in (19, 25)]
    for name in caches:
        put(run, name, "a")
    r = open_run(run, "auto", False)
    assert r.resume == run / "ckpt_00000019.pt"
    r.close()
    open_run(run, "", True).close()
    assert names(run) == caches


def test_an_unwritable_checkpoint_folder_is_a_cannot_write_error_before_any_work(tmp_path, monkeypatch):
    """The tests run as root, whom a read-only mode does not stop, so the folder is made unwritable in two other
    ways: a file where a parent folder should be, and os.open failing as on a read-only file system."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(
        WriteError, match=r"checkpoint_path=.*blocker/run: cannot write \(NotADirectoryError: .*writable"
    ):
        open_run(tmp_path / "blocker" / "run", "", False)
    run = tmp_path / "readonly"
    run.mkdir()
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(run)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    for folder in (run, run / "new"):  # an existing folder, and one that open_run would create
        with pytest.raises(WriteError) as e:
            open_run(folder, "auto", False)
        message = str(e.value)
        assert message.startswith(f"checkpoint_path={folder}: cannot write (OSError: [Errno 30] Read-only file system")
        assert "give a checkpoint_path in a folder you can write to" in message
    assert names(run) == []


def test_a_checkpoint_is_only_written_from_finite_weights(tmp_path):
    harness = Harness(tmp_path / "run", "", False)
    with harness:
        state = {"g_state_dict": {"w": torch.ones(3)}, "rng_state": [{"torch": torch.zeros(4, dtype=torch.uint8)}]}
        harness.save_periodic(state, 4)
        state["g_state_dict"]["w"][1] = math.inf
        state["opt"] = {
            "state": {0: {"exp_avg": torch.tensor([math.nan])}},
            "best": math.inf,
        }  # plain inf: not a tensor
        with pytest.raises(
            TrainingAborted, match=r"not finite after step 5 \(g_state_dict\.w, opt\.state\.0\.exp_avg\)"
        ):
            harness.save_periodic(state, 5)
        with pytest.raises(
            TrainingAborted, match=r"after step 5 .*Last checkpoint with finite weights: .*ckpt_00000004"
        ):
            harness.save(state, "best.pt", 5)
    assert names(tmp_path / "run") == ["ckpt_00000004.pt"]


def test_a_run_at_its_end_is_already_finished_and_trains_nothing(capsys):
    for position, finished in (
        (Position(steps=8, epoch=2, batch_index=2), True),  # max steps reached
        (Position(steps=9, epoch=3, batch_index=0), True),  # past them
        (Position(steps=7, epoch=2, batch_index=1), False),
    ):
        loop = RandomSteps(position, last=8)
        assert already_finished(loop, position, steps_per_epoch=3, limit="max_steps=8") is finished
        assert loop.seen == []
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "already finished at step 7 (max_steps=8): nothing to train; resume with a larger max_steps to train on"
    )
    assert out[1].startswith("already finished at step 8 (max_steps=8)") and len(out) == 2
    after_epoch = Position(steps=6, epoch=1, batch_index=3)  # a checkpoint after an epoch's last batch
    assert not already_finished(RandomSteps(after_epoch, last=8), after_epoch, steps_per_epoch=3, limit="max_steps=8")
    assert after_epoch == Position(steps=6, epoch=2, batch_index=0)
