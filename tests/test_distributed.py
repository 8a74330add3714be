"""Two training processes on the CPU (gloo) under torchrun, with engine=torch (DDP) and engine=deepspeed.

Both ranks must end with identical parameters and buffers, each rank must train on its own half of the data,
reshuffled every epoch, only rank 0 may write checkpoints and logs, and a 2-rank resume must continue exactly.
The first DeepSpeed run on a machine builds DeepSpeed's shared-memory CPU communication op (about 1.5 minutes,
then cached under ~/.cache/torch_extensions).
"""

from pathlib import Path

import pytest
import torch
from helpers import ASGAN_RESUMED_KEYS, assert_same_entries, run_two_cpu_ranks, tiny_args

from density.runtime import checkpoint as ckpt

pytestmark = pytest.mark.slow  # multi-process runs

N_TRAIN = 20  # tiny_args' 24 items less n_valid=4: 10 per rank, 2 batches of 4
# Runs train_asgan.main in one rank and records what it saved, the sampler's indices per epoch, and the final
# state dicts of G and D.
RANK_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {root!r})
from density.gan import train as train_asgan
from density.runtime import checkpoint
saves, trained, shards = [], [], []
save = checkpoint.save
checkpoint.save = lambda state, path: saves.append(str(path)) or save(state, path)
make_engine = train_asgan.make_engine
def recording_engine(cfg):
    engine = make_engine(cfg)
    wrap = engine.wrap
    engine.wrap = lambda model, optim: trained.append(wrap(model, optim)) or trained[-1]
    return engine
class RecordingSampler(train_asgan.DistributedSampler):
    def __iter__(self):
        shards.append(list(super().__iter__()))
        return iter(shards[-1])
train_asgan.make_engine = recording_engine
train_asgan.DistributedSampler = RecordingSampler
train_asgan.main(sys.argv[2:])
states = [{{k: v.detach().cpu() for k, v in t.module.state_dict().items()}} for t in trained]
torch.save({{'states': states, 'saves': saves, 'shards': shards}}, f"{{sys.argv[1]}}/rank{{os.environ['RANK']}}.pt")
"""


def launch(tmp_path, out, args):
    """torchrun, 2 processes -> what rank 0 and rank 1 recorded."""
    return run_two_cpu_ranks(RANK_SCRIPT, tmp_path / out, args, tmp_path)


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_two_cpu_ranks_agree_only_rank0_writes_and_resume_is_exact(tmp_path, engine):
    common = [
        f"engine={engine}",
        "max_steps=7",
        "checkpoint_interval=3",
        "validation_interval=4",
        "summary_interval=2",
        "stdout_interval=1000",
        "n_valid=4",
    ]
    rank0, rank1 = launch(tmp_path, "record", tiny_args(tmp_path, "run", *common))
    assert rank1["saves"] == []
    assert [Path(p).name for p in rank0["saves"]] == ["ckpt_00000003.pt", "ckpt_best_fad.pt", "ckpt_00000006.pt"]
    assert len(list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))) == 1
    assert len(rank0["states"]) == len(rank1["states"]) == 2  # G and D
    for s0, s1 in zip(rank0["states"], rank1["states"]):
        assert s0.keys() == s1.keys()
        for name in s0:  # norm_ema: rank 0's is broadcast before each forward, then each rank updates its own
            assert name.endswith("norm_ema") or torch.equal(s0[name], s1[name]), name

    epochs = list(zip(rank0["shards"], rank1["shards"]))
    assert len(epochs) == 4
    for a, b in epochs:
        assert len(a) == len(b) == N_TRAIN // 2 and sorted(a + b) == list(range(N_TRAIN))
    assert len({tuple(a) for a, _ in epochs}) == 4, "the shards were not reshuffled every epoch"

    # 2-rank resume from step 3 (the end of epoch 1) == the straight run, RNG states of both ranks included
    launch(
        tmp_path,
        "record_resumed",
        tiny_args(tmp_path, "resumed", *common, f"resume_checkpoint={tmp_path}/run/ckpt_00000003.pt"),
    )
    start, a, b = (
        ckpt.load(tmp_path / run / f"ckpt_0000000{s}.pt") for run, s in (("run", 3), ("run", 6), ("resumed", 6))
    )
    assert_same_entries(a, b, ASGAN_RESUMED_KEYS)
    assert len(a["rng_state"]) == 2 and not torch.equal(a["rng_state"][0]["torch"], a["rng_state"][1]["torch"])
    for model in ("g_state_dict", "d_state_dict"):  # both kept training after step 3
        assert any(not torch.equal(start[model][n], v) for n, v in a[model].items()), model
