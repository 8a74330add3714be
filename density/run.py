"""Pieces every training command shares: seeding, and stopping cleanly on SIGINT/SIGTERM.

A stop signal is only recorded (`catch_stop_signals`); the training loop finishes its step, writes a
checkpoint and returns. DataLoader workers ignore the signals (`ignore_stop_signals`), so a signal sent to the
whole process group (terminal, SLURM, `kill -- -PGID`) does not kill them under the main process.
"""
import random
import signal

import numpy as np
import torch

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
