"""Training checkpoints: the versioned schema, building and reading them, atomic writes, safe loading, RNG state.

A training checkpoint is a dict with these keys (KEYS; `format_version` FORMAT_VERSION). The first ten are the
reference's (reference note 4); a reference checkpoint, or one of this project written before `format_version`
existed, holds no `format_version` and reads as version 0: it loads, resumes (without the resume state it lacks)
and works in the hub entry. A version newer than FORMAT_VERSION is refused.
"""

import random
from pathlib import Path

import numpy as np
import torch

from density.runtime.fileio import load_torch, save_torch

FORMAT_VERSION = 1
KEYS = {
    "g_state_dict": "generator weights and buffers (the training G)",
    "d_state_dict": "discriminator weights",
    "g_ema_state_dict": "EMA generator (what inference uses; absent in the reference ckpt_best_fad.pt)",
    "g_optim_state_dict": "Adam state of G (group 0: ff, preconv, layers, head; group 1: W)",
    "d_optim_state_dict": "Adam state of D",
    "g_scaler_state_dict": "fp16 GradScaler state of G, or None",
    "d_scaler_state_dict": "fp16 GradScaler state of D, or None",
    "steps": "the last finished step (resuming starts at steps + 1)",
    "epoch": "the epoch of that step",
    "cfg_yaml": "the run configuration (density/config.py config_from_yaml reads it)",
    "format_version": "this layout's version (absent: version 0, a reference or pre-versioning checkpoint)",
    "train_state": "density/training.py TrainState: phase, counter, batch_index (next batch of the epoch), "
    "d_update_perc, best_fad, smoothed and latest losses",
    "ada_state": "Augmenter.state_dict(): ADA p, r_t and its running sums",
    "rng_state": "one rng_state() per rank (python, numpy, torch, CUDA), to resume the random streams exactly",
    "run_id": "the run the checkpoint belongs to (density/run.py)",
    "feature_norm": "FeatureNorm statistics {mean, std} (normalize_features=true), or None",
}
REQUIRED_KEYS = (
    "g_state_dict",
    "d_state_dict",
    "g_optim_state_dict",
    "d_optim_state_dict",
    "steps",
    "epoch",
    "cfg_yaml",
)  # in every training checkpoint, the reference's too


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, or not an asgan training checkpoint."""


def save(state, path):
    """Write `state` to `path` atomically: torch.save to a temporary file in the same folder, then rename."""
    save_torch(state, path)


def load(path, required=REQUIRED_KEYS, what="an asgan training checkpoint"):
    """Load a checkpoint dict on the CPU without unpickling code; CheckpointError names the file otherwise, or
    the `required` keys it lacks for `what` it should be (default: an asgan training checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = load_torch(path, "torch checkpoint")
    except (OSError, ValueError) as e:
        raise CheckpointError(str(e)) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected an asgan checkpoint dict")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not {what}, missing keys {missing}")
    format_version(state, path)
    return state


def format_version(state, path):
    """The checkpoint's layout version (0 without the key); CheckpointError for one newer than this code reads."""
    version = state.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CheckpointError(
            f"{path}: checkpoint format_version {version!r} is not a version (an integer 0..{FORMAT_VERSION}); "
            "the file was not written by asgan or was edited: use the checkpoint the run wrote"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {version}; this code reads versions up to "
            f"{FORMAT_VERSION}: update asgan"
        )
    return version


def training_checkpoint(*, G, D, g_ema, train_state, cfg_yaml, run_id, feature_norm):
    """The checkpoint dict (KEYS) from the wrapped models G and D (density/engine.py Trainables), the EMA
    generator, TrainState.state_dict(...) entries, the config YAML, the run id and FeatureNorm.to_checkpoint()."""
    g_optim, g_scaler = G.state_dict()
    d_optim, d_scaler = D.state_dict()
    state = {
        "format_version": FORMAT_VERSION,
        "g_state_dict": cpu_state(G.module),
        "d_state_dict": cpu_state(D.module),
        "g_optim_state_dict": g_optim,
        "d_optim_state_dict": d_optim,
        "g_ema_state_dict": cpu_state(g_ema),
        "g_scaler_state_dict": g_scaler,
        "d_scaler_state_dict": d_scaler,
        **train_state,
        "cfg_yaml": cfg_yaml,
        "run_id": run_id,
        "feature_norm": feature_norm,
    }
    assert state.keys() <= KEYS.keys(), sorted(state.keys() - KEYS.keys())
    return state


def load_models(state, path, g, d, g_ema):
    """Weights of a training checkpoint into g, d and g_ema (the training G where it has no EMA G)."""
    try:
        g.load_state_dict(state["g_state_dict"])
        d.load_state_dict(state["d_state_dict"])
        g_ema.load_state_dict(state.get("g_ema_state_dict") or state["g_state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit the configured model; use the rp_w_cfg of the run that wrote it ({e})"
        ) from e


INIT_KEYS = {
    "G": ("g_state_dict", "g_ema_state_dict"),
    "D": ("d_state_dict",),
    "G_ema": ("g_ema_state_dict", "g_state_dict"),
}  # part -> checkpoint keys, the first one present


def load_init_weights(path, *, parts, strict, g, d, g_ema):
    """Weights of the `parts` (INIT_KEYS: 'G', 'D', 'G_ema'; G and G_ema fall back to each other, e.g. for a
    weights-only official checkpoint) of a checkpoint, ours or a reference/official one, into g, d and g_ema; a
    G_ema not in `parts` copies the loaded g.
    strict: a missing, unexpected or differently shaped tensor is a CheckpointError; otherwise it is skipped
    (keeping its fresh init) and each part's skipped keys are returned -> {part: [messages]}."""
    state = load(path, required=(), what="a checkpoint with model weights")
    skipped = {}
    for part, module in (("G", g), ("D", d), ("G_ema", g_ema)):
        if part not in parts:
            continue
        key = next((k for k in INIT_KEYS[part] if state.get(k)), None)
        if key is None:
            raise CheckpointError(
                f"{path}: holds no {' or '.join(INIT_KEYS[part])} for init_parts {part}; remove {part} from init_parts"
            )
        skipped[part] = _load_matching(module, state[key], strict=strict, what=f"{path} {key}")
    if "G_ema" not in parts:
        g_ema.load_state_dict(g.state_dict())
    return skipped


def _load_matching(module, weights, *, strict, what):
    """Load the tensors of `weights` that fit `module` -> [message per skipped key]; strict: none may be skipped."""
    own = module.state_dict()
    problems = [
        f"{k}: shape {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} here"
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    ]
    problems += [f"{k}: not in the checkpoint" for k in own.keys() - weights.keys()]
    problems += [f"{k}: not in this model" for k in weights.keys() - own.keys()]
    if strict and problems:
        raise CheckpointError(
            f"{what} does not fit the configured model ({'; '.join(sorted(problems))}); use "
            "the rp_w_cfg of the run that wrote it, or init_strict=false to skip these tensors"
        )
    module.load_state_dict({k: v for k, v in weights.items() if k in own and v.shape == own[k].shape}, strict=False)
    return sorted(problems)


def load_optimizers(state, G, D):
    """Optimiser and loss-scaler states of a training checkpoint into the Trainables G and D."""
    G.load_state_dict(state["g_optim_state_dict"], state.get("g_scaler_state_dict"))
    D.load_state_dict(state["d_optim_state_dict"], state.get("d_scaler_state_dict"))


def cpu_state(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def periodic_path(checkpoint_path, steps):
    return Path(checkpoint_path) / f"ckpt_{steps:08d}.pt"


def rng_state():
    """Generator states of python `random`, numpy, torch and every CUDA device, in weights_only-safe types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
