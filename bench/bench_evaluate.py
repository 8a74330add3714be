"""Evaluation speed: clips/s of classifier scoring (front end + ResNeXt) and of the whole --checkpoint path of
evaluate.py (z -> generator -> vocoder -> classifier), fp32, random weights, median of --repeats runs.

Classifiers: the 'cpu' and 'paper' configurations. Generators: the released HuBERT architecture + HuBERT
HiFi-GAN (`hubert`), the mel preset + 32-iteration Griffin-Lim (`mel_gl`); each scored by the 'cpu' classifier.

    python bench/bench_evaluate.py [--device cpu|cuda] [--batches 1 64] [--archs cpu paper] [--models hubert mel_gl]
        [--repeats 3] [--warmup 1] [--threads N]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, median_seconds  # noqa: E402
from density.evaluation.classifier import ResNeXt  # noqa: E402
from density.inference.asgan import untrained_asgan  # noqa: E402
from density.vocoders.vocoder import GriffinLimVocoder  # noqa: E402


def classifier_flops(model):
    """Forward FLOPs per clip of the convolutions and the final linear layer (2 per multiply-add)."""
    flops = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: flops.append(2 * o[0].numel() * m.weight[0].numel()))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, 32, 32, device=model.classifier.weight.device))
    for h in hooks:
        h.remove()
    return sum(flops) + 2 * model.classifier.weight.numel()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--archs", nargs="+", default=["cpu", "paper"])
    p.add_argument("--models", nargs="+", default=["hubert", "mel_gl"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine(device)}")
    torch.manual_seed(0)
    classifiers = {a: ResNeXt.from_arch(a).to(device).eval() for a in args.archs}
    for arch, clf in classifiers.items():
        gflop = classifier_flops(clf) / 1e9
        for bs in args.batches:
            wav = 0.1 * torch.randn(bs, 16000, device=device)
            t = median_seconds(
                lambda clf=clf, wav=wav: clf.classify(wav), device, warmup=args.warmup, repeats=args.repeats
            )
            print(f"classifier {arch:5s} ({gflop:.3f} GFLOP/clip) batch {bs:3d}: {bs / t:8.1f} clips/s")
    clf = classifiers.get("cpu") or ResNeXt.from_arch("cpu").to(device).eval()
    for name in args.models:
        model = untrained_asgan(device, mel=name != "hubert")
        if name == "mel_gl":
            model.vocoder = GriffinLimVocoder().to(device)
        model.g.calibrate_norm_ema(torch.randn(64, model.z_dim, device=device))
        for bs in args.batches:
            z = torch.randn(bs, model.z_dim)
            t = median_seconds(
                lambda clf=clf, model=model, z=z: clf.classify(model.generate_from_latent(z)),
                device,
                warmup=args.warmup,
                repeats=args.repeats,
            )
            print(f"--checkpoint path {name:6s} + cpu classifier, batch {bs:3d}: {bs / t:8.2f} clips/s")


if __name__ == "__main__":
    main()
