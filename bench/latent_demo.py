"""Projection of held-out real clips into a trained generator's latent space (edit.py's projection), on one CPU thread.

    OMP_NUM_THREADS=1 python bench/latent_demo.py --checkpoint outputs/demo/asgan/ckpt_00001999.pt \
        --splits outputs/demo/splits --n_test 200 --steps 200

For --n_test clips of sc09-test.csv it reports the mean feature error (l1 on normalised log-mels, or cosine for
HuBERT) of: the projection into W and into W+ (per-layer w), the mean w's output, and the nearest of --n_train clips
of sc09-train.csv (the best a lookup of a real training clip does). The probe and the example wavs/PNG are
edit.py invocations (README, "Latent-space tools").
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from density.inference import (
    edit,  # noqa: E402
    latent,  # noqa: E402
)


def nearest_error(test, train, loss, chunk=256):
    """Per test clip, the smallest feature_loss against any training clip: (N, L, C), (M, L, C) -> (N,)."""
    best = torch.full((len(test),), float("inf"))
    for tr in train.split(chunk):
        errs = torch.stack([latent.feature_loss(tr, x[None].expand_as(tr), loss) for x in test])  # (N, chunk)
        best = torch.minimum(best, errs.min(1).values)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--splits", required=True, help="folder with sc09-train.csv and sc09-test.csv")
    p.add_argument("--n_test", type=int, default=200)
    p.add_argument("--n_train", type=int, default=2000, help="training clips searched for the nearest clip")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--spaces", nargs="+", default=["w", "w+"], choices=latent.SPACES)
    p.add_argument("--hubert", help="HuBERT checkpoint for a hubert_L* generator")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    splits = Path(a.splits)
    extra = ["--hubert", a.hubert] if a.hubert else []
    args = edit.parse_args(
        [
            "project",
            "seed:0",
            "--checkpoint",
            a.checkpoint,
            "--out_dir",
            "unused",
            "--steps",
            str(a.steps),
            "--device",
            "cpu",
            *extra,
        ]
    )
    tools = edit.Tools(args)
    test_paths, _ = edit.labelled_subset(splits / "sc09-test.csv", a.n_test, 0)
    train_paths, _ = edit.labelled_subset(splits / "sc09-train.csv", a.n_train, 0)
    _, test = tools.features(test_paths)
    _, train = tools.features(train_paths)
    result = {
        "checkpoint": a.checkpoint,
        "n_test": len(test),
        "n_train_searched": len(train),
        "steps": a.steps,
        "loss": tools.loss,
        "error": {},
        "seconds": {},
    }
    avg = tools.generate_features(tools.stats.w_avg.expand(len(test), -1))
    result["error"]["mean w"] = latent.feature_loss(avg, test, tools.loss).mean().item()
    result["error"]["nearest training clip"] = nearest_error(test, train, tools.loss).mean().item()
    for space in a.spaces:
        t0 = time.perf_counter()
        result["error"][f"projection ({space})"] = tools.project(test, space=space).error.mean().item()
        result["seconds"][space] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
