"""Shared pieces of the bench scripts: machine peak, FLOP counts from layer shapes, timing, memory."""

import platform
import resource
import statistics
import time

import torch

from density.models import Discriminator, Generator


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device="cpu", warmup=2, repeats=7):
    """Median wall time of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(device="cpu", n=2048, dtype=torch.float32):
    """Measured throughput of an n×n matmul (GFLOP/s): the machine's practical dense peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = median_seconds(lambda: a @ b, device, warmup=3, repeats=10)
    return 2 * n**3 / t / 1e9


def peak_memory_gb(device="cpu"):
    """Peak CUDA allocation, or the process's peak resident set size on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is in KiB on Linux


def cpu_name():
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device="cpu"):
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{cpu_name()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def generator_flops(g: Generator) -> float:
    """Forward FLOPs per sample (2 per multiply-add) from the layer shapes: mapping, input, convs, filters."""
    flops = sum(2 * m.weight.numel() for m in g.W.fcs if hasattr(m, "weight"))
    C, L = g.preconv.weight.shape[0], g.first_len
    flops += 2 * 2 * C * C * L  # ff mlp + 1x1 pre-conv
    for layer in list(g.layers) + [g.head]:
        r = layer.resampler
        flops += 2 * layer.c_out * layer.c_in * layer.kernel_size * L + 2 * layer.c_in * layer.affine.weight.shape[1]
        if r.up_factor > 1:
            L *= r.up_factor
            flops += 2 * layer.c_out * L * r.up_lpf_filter.numel()
        if r.down_factor > 1:
            L = -(-L // r.down_factor)
            flops += 2 * layer.c_out * L * r.down_lpf_filter.numel()
    return float(flops)


def discriminator_flops(d: Discriminator) -> float:
    """Forward FLOPs per sample of the discriminator's convolutions, filters and head."""
    flops, L = 0, d.seq_len
    for block in d.layers:
        c_out, c_in, k = block.conv1.weight.shape
        flops += 2 * c_in * c_in * k * L  # conv0
        if block.down > 1:
            flops += 2 * c_in * L * block.lpf.down_lpf_filter.numel()
            L_out = -(-L // block.down)
            flops += 2 * c_in * L_out * block.resampler.down_lpf_filter.numel()
        else:
            L_out = L
        flops += 2 * c_out * c_in * k * L_out + 2 * c_out * c_in * L_out  # conv1 + skip
        L = L_out
    h = d.head
    flops += 2 * h.conv.weight.numel() * L + 2 * h.fc.weight.numel() + 2 * h.out.weight.numel()
    return float(flops)
