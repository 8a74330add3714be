"""Training checkpoints: atomic writes, safe loading, pruning, and RNG state capture.

A checkpoint is the dict of reference note 4 (g/d/g_ema state dicts, optimiser and scaler states, steps, epoch,
cfg_yaml) plus `train_state` (phase, counter, next batch index, smoothed losses, best FAD, d_update_perc),
`ada_state` (Augmenter.state_dict()) and `rng_state` (a list with one `rng_state()` per rank: python, numpy,
torch, CUDA), enough to resume exactly, and `run_id` (the run it belongs to, see density/run.py).
"""
import random
from pathlib import Path

import numpy as np
import torch

from density.fileio import load_torch, save_torch

REQUIRED_KEYS = ('g_state_dict', 'd_state_dict', 'g_optim_state_dict', 'd_optim_state_dict', 'steps', 'epoch',
                 'cfg_yaml')  # in every training checkpoint, the reference's too


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, or not an asgan training checkpoint."""


def save(state, path):
    """Write `state` to `path` atomically: torch.save to a temporary file in the same folder, then rename."""
    save_torch(state, path)


def load(path, required=REQUIRED_KEYS, what='an asgan training checkpoint'):
    """Load a checkpoint dict on the CPU without unpickling code; CheckpointError names the file otherwise, or
    the `required` keys it lacks for `what` it should be (default: an asgan training checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: no such checkpoint file')
    try:
        state = load_torch(path, 'torch checkpoint')
    except (OSError, ValueError) as e:
        raise CheckpointError(str(e)) from e
    if not isinstance(state, dict):
        raise CheckpointError(f'{path}: holds a {type(state).__name__}, expected an asgan checkpoint dict')
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f'{path}: not {what}, missing keys {missing}')
    return state


def periodic_path(checkpoint_path, steps):
    return Path(checkpoint_path) / f'ckpt_{steps:08d}.pt'


def rng_state():
    """Generator states of python `random`, numpy, torch and every CUDA device, in weights_only-safe types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {'python': random.getstate(),
            'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': pos,
                      'has_gauss': has_gauss, 'gauss': gauss},
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['gauss']))
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
