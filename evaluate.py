"""Compute ASGAN's evaluation metrics (spec §9.2) from saved arrays.

Each input is a 2-D array saved as .npy or as a single tensor with torch.save (loaded with
weights_only=True). Every metric whose inputs are given is computed:

    fid, ndb_over_k            --gen_feats and --real_feats (classifier features, (N, C) and (M, C))
    inception_score,
    modified_inception_score   --gen_logits (classifier logits or log-probabilities of generated clips, (N, K))
    am_score                   --gen_logits and --train_logits ((M, K), the training set)
    linear_separability        --gen_logits and --latents (the (N, d) latents that made the clips)

Example:
    python evaluate.py --gen_feats gen_feats.pt --real_feats train_feats.pt --gen_logits gen_logits.pt \\
        --train_logits train_logits.pt --latents gen_z.pt --json metrics.json
"""
import argparse
import json
import math

import numpy as np
import torch

from density import metrics
from density.fileio import write_text

INPUTS = ("gen_feats", "real_feats", "gen_logits", "train_logits", "latents")


def load_matrix(path):
    """(N, C) float array from a .npy file or a torch.save'd tensor."""
    try:
        if path.endswith(".npy"):
            x = np.load(path, allow_pickle=False)
        else:
            x = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"evaluate.py: {path} does not exist")
    except Exception as e:  # torch.load raises anything (IndexError, UnpicklingError, ...) on a foreign file
        raise SystemExit(f"evaluate.py: cannot load {path} as .npy or a weights_only torch file: {e}")
    if torch.is_tensor(x):
        x = x.float().numpy() if x.dtype in (torch.float16, torch.bfloat16) else x.numpy()
    if not isinstance(x, np.ndarray):
        raise SystemExit(f"evaluate.py: {path} holds a {type(x).__name__}; save a single tensor or array "
                         "of shape (N, C) instead")
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise SystemExit(f"evaluate.py: {path} must be a finite float array of shape (N, C), "
                         f"got dtype {x.dtype} shape {x.shape}")
    return x


def compute(args):
    """Dict of every metric computable from the given files."""
    a = {k: load_matrix(v) for k, v in vars(args).items() if k in INPUTS and v is not None}
    out = {}
    if "gen_feats" in a and "real_feats" in a:
        out["fid"] = metrics.fid(a["gen_feats"], a["real_feats"])
        if args.ndb_k > 0:
            out["ndb_over_k"] = metrics.ndb(a["real_feats"], a["gen_feats"], k=args.ndb_k)
    if "gen_logits" in a:
        gen_logits = torch.from_numpy(a["gen_logits"]).double()
        out["inception_score"] = metrics.inception_score(gen_logits.log_softmax(1))
        out["modified_inception_score"] = metrics.modified_inception_score(gen_logits.softmax(1))
        if "train_logits" in a:
            train_probs = torch.from_numpy(a["train_logits"]).double().softmax(1)
            out["am_score"] = metrics.am_score(train_probs, gen_logits.softmax(1))
        if "latents" in a:
            out["linear_separability"] = metrics.linear_separability(
                a["gen_logits"], a["latents"], svm_random_state=args.svm_random_state, trim=args.ls_trim)
    return out


def write_json(path, result):
    """Atomic write; non-finite values become null."""
    clean = {k: (v if math.isfinite(v) else None) for k, v in result.items()}
    write_text(path, json.dumps(clean, indent=2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gen_feats", help="classifier features of generated clips, (N, C)")
    p.add_argument("--real_feats", help="classifier features of real (training) clips, (M, C)")
    p.add_argument("--gen_logits", help="classifier logits of generated clips, (N, K); softmax is applied")
    p.add_argument("--train_logits", help="classifier logits of training clips, (M, K), for the AM score")
    p.add_argument("--latents", help="latents of the generated clips, (N, d), for linear separability")
    p.add_argument("--ndb_k", type=int, default=50, help="K-means clusters for NDB (default 50; 0 skips NDB)")
    p.add_argument("--ls_trim", type=float, default=0.5,
                   help="fraction of most confident clips kept for linear separability (default 0.5)")
    p.add_argument("--svm_random_state", type=int, default=0, help="SVC random_state (default 0)")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    args = p.parse_args(argv)
    if not ((args.gen_feats and args.real_feats) or args.gen_logits):
        p.error("nothing to compute: FID/NDB needs --gen_feats and --real_feats, the other metrics need "
                "--gen_logits")
    try:
        result = compute(args)
    except ValueError as e:
        raise SystemExit(f"evaluate.py: {e}")
    for name, value in result.items():
        print(f"{name}: {value:.6g}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
