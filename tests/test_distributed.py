"""Two training processes on the CPU (gloo) under torchrun, with engine=torch (DDP) and engine=deepspeed.

Both ranks must end with identical parameters, and only rank 0 may write checkpoints and logs. The first
DeepSpeed run on a machine builds DeepSpeed's shared-memory CPU communication op (about 1.5 minutes, then
cached under ~/.cache/torch_extensions).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train import tiny_args

ROOT = Path(__file__).resolve().parents[1]
# Runs train_asgan.main in one rank and records what it saved and the final parameters of G and D.
RANK_SCRIPT = '''
import os, sys, torch
sys.path.insert(0, {root!r})
import train_asgan
from density import checkpoint
saves, trained = [], []
save = checkpoint.save
checkpoint.save = lambda state, path: saves.append(str(path)) or save(state, path)
make_engine = train_asgan.make_engine
def recording_engine(cfg):
    engine = make_engine(cfg)
    wrap = engine.wrap
    engine.wrap = lambda model, optim: trained.append(wrap(model, optim)) or trained[-1]
    return engine
train_asgan.make_engine = recording_engine
train_asgan.main(sys.argv[2:])
params = [{{n: p.detach().cpu() for n, p in t.module.named_parameters()}} for t in trained]
torch.save({{'params': params, 'saves': saves}}, f"{{sys.argv[1]}}/rank{{os.environ['RANK']}}.pt")
'''


@pytest.mark.parametrize('engine', ['torch', 'deepspeed'])
def test_two_cpu_ranks_agree_and_only_rank0_writes(tmp_path, engine):
    script = tmp_path / 'rank.py'
    script.write_text(RANK_SCRIPT.format(root=str(ROOT)))
    args = tiny_args(tmp_path, 'run', f'engine={engine}', 'max_steps=7', 'checkpoint_interval=3',
                     'validation_interval=4', 'summary_interval=2', 'stdout_interval=1000', 'n_valid=4')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(script), str(tmp_path), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert rank1['saves'] == []
    assert [Path(p).name for p in rank0['saves']] == ['ckpt_00000003.pt', 'ckpt_best_fad.pt', 'ckpt_00000006.pt']
    assert len(list((tmp_path / 'run' / 'logs').glob('events.out.tfevents.*'))) == 1
    assert len(rank0['params']) == len(rank1['params']) == 2  # G and D
    for p0, p1 in zip(rank0['params'], rank1['params']):
        assert p0.keys() == p1.keys()
        for name in p0:
            assert torch.equal(p0[name], p1[name]), name
    initial = torch.load(tmp_path / 'run' / 'ckpt_00000003.pt', weights_only=True)['d_state_dict']
    assert not all(torch.equal(initial[n], rank0['params'][1][n]) for n in rank0['params'][1])  # D kept training
