"""Generator inference speed: full-size README-command config, eval, no_grad, fp32 (or autocast with --amp).

Each batch size runs with the inference cache off (every call redoes the weight-only work: scaled and demodulated
weights, resampling matrices) and on (density/models.py `inference_cached`), in one process: every (batch, cache)
pair is timed once per round, in turns, so that a change in the machine's load affects all alike. Prints
the machine, median samples/s of both, GFLOP/sample (from layer shapes), the measured 2048x2048 matmul
throughput and the share of it reached, peak memory, and the batch-1 rate as a share of the batch-64 rate.
Usage: python bench/bench_generator.py [--device cpu|cuda] [--batches 1 16 64]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import generator_flops, machine, matmul_peak_gflops, peak_memory_gb, sync  # noqa: E402
from density.config import parse_config  # noqa: E402
from density.models import Generator, inference_cache  # noqa: E402

README_OVERRIDES = ["rp_w_cfg.w_layers=1", "rp_w_cfg.use_sg3_ff=True", "rp_w_cfg.D_kernel_size=5"]
MODES = {"cache off": False, "cache on": True}


def generate(g, z, amp, cached):
    """g(z) without autograd, under autocast to `amp` if given, with the inference cache on or off."""
    device_type = z.device.type
    with torch.no_grad(), inference_cache(cached):
        with torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None):
            return g(z)


def median_seconds_in_turns(fns, device, repeats, warmup=2):
    """{name: median wall time of fn()} over `repeats` rounds, each round timing every fn once in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--amp", choices=["fp16", "bf16"], default=None, help="autocast dtype (default: plain fp32)")
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = parse_config(README_OVERRIDES)
    g = Generator(cfg.rp_w_cfg).to(args.device).eval()
    g.calibrate_norm_ema(torch.randn(64, g.z_dim, device=args.device))  # trained-like activation scales
    gflop = generator_flops(g) / 1e9
    print(f"machine: {machine(args.device)}; generator: {gflop:.3f} GFLOP/sample")
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.amp)
    z = torch.randn(16, g.z_dim, device=args.device)
    if amp is not None:
        ref = g(z).detach()
        err = ((generate(g, z, amp, True).float() - ref).abs().max() / ref.abs().max()).item()
        print(f"{args.amp} autocast vs fp32: max abs difference / max abs output = {err:.2e}")
    same = torch.equal(generate(g, z, amp, False), generate(g, z, amp, True))
    print(f"outputs with and without the cache bit-identical: {same}")
    peak = matmul_peak_gflops(args.device)
    zs = {bs: torch.randn(bs, g.z_dim, device=args.device) for bs in args.batches}
    fns = {
        (mode, bs): (lambda z=zs[bs], c=cached: generate(g, z, amp, c))
        for bs in args.batches
        for mode, cached in MODES.items()
    }
    rates = {key: key[1] / t for key, t in median_seconds_in_turns(fns, args.device, args.repeats).items()}
    peak = max(peak, matmul_peak_gflops(args.device))  # the better of before and after: the machine's practical peak
    for (mode, bs), rate in rates.items():
        print(
            f"batch {bs:3d} {mode:9s}: {rate:8.1f} samples/s  {rate * gflop:7.1f} GFLOP/s  "
            f"{100 * rate * gflop / peak:5.1f}% of matmul peak ({peak:.0f} GFLOP/s)"
        )
    print(f"peak mem {peak_memory_gb(args.device):.2f} GB")
    small, large = min(args.batches), max(args.batches)
    if small != large:
        shares = ", ".join(f"{mode} {100 * rates[mode, small] / rates[mode, large]:.1f}%" for mode in MODES)
        print(f"batch-{small} rate as a share of the batch-{large} rate: {shares}")


if __name__ == "__main__":
    main()
