"""Throughput of HuBERT layer-6 feature extraction: HuBERT-base-sized random model, 1-s clips, batch 1 and 16.

    python bench/bench_features.py [--device cpu] [--repeats 5] [--threads N]

Prints the median clips/s over `repeats` timed calls (after one warm-up call) and the machine it ran on.
"""

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import cpu_name, median_seconds  # noqa: E402
from density.audio.signal import CLIP_SAMPLES  # noqa: E402
from density.features.hubert import HubertFeatureReader  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    model = HubertModel(HubertConfig())  # HuBERT base: 12 x 768, conv front end 7 x 512, 94.4 M parameters
    n_params = sum(p.numel() for p in model.parameters())
    reader = HubertFeatureReader(model, layer=6, device=args.device)
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}")
    print(
        f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads"
        + (f"; GPU: {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else "")
    )
    print(f"model: HuBERT base config, {n_params / 1e6:.1f} M parameters, layer 6 (blocks 7-12 not run), fp32")
    for bs in args.batch_sizes:
        x = 0.1 * torch.randn(bs, CLIP_SAMPLES, device=dev)
        assert reader.get_feats_batched(x).shape == (bs, 50, 768)  # also the warm-up call
        med = median_seconds(lambda x=x: reader.get_feats_batched(x), dev, warmup=0, repeats=args.repeats)
        print(f"batch {bs:3d}: median {med * 1e3:8.1f} ms/call, {bs / med:7.1f} clips/s ({args.repeats} calls)")


if __name__ == "__main__":
    main()
