"""Training step speed on the CPU: full-size README-command config, batch 16, fp32.

Times the loop's own code (density/training.py d_forward / g_forward, then backward, gradient clipping and the Adam
step) and prints the median seconds per D step without R1, per D step with R1 and per G step, with the FLOP
utilisation against the measured 2048x2048 fp32 matmul peak (as bench_generator.py). FLOPs per sample come from
the layer shapes (bench.common), counting a backward pass as two forwards:
    D step     G fwd (no grad) + D fwd and bwd on fake and real            = Fg + 6 Fd
    R1 adds    the input gradient of D(real) (1 Fd) and its backward (2 Fd) = + 3 Fd
    G step     G fwd and bwd + D fwd and input-gradient bwd (D frozen)     = 3 Fg + 2 Fd
Usage: python bench/bench_train.py [--batch 16] [--repeats 5]   (the reference comparison needs batch 16)
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    discriminator_flops,
    generator_flops,
    machine,
    matmul_peak_gflops,
    median_seconds,
    peak_memory_gb,
)
from density.augment import Augmenter  # noqa: E402
from density.config import parse_config  # noqa: E402
from density.gan import training  # noqa: E402
from density.models import Discriminator, Generator  # noqa: E402
from density.runtime.engine import TorchEngine  # noqa: E402

# The README training command of the reference (reference note 3), data paths aside.
README_COMMAND = [
    "model=rp_w",
    "n_valid=400",
    "data_type=hubert_L6",
    "z_dim=512",
    "rp_w_cfg.z_dim=512",
    "rp_w_cfg.w_layers=1",
    "batch_size=16",
    "lr=2e-3",
    "grad_clip=10",
    "aug_init_p=0.2",
    "n_epochs=800",
    "c_dim=768",
    "rp_w_cfg.c_dim=768",
    "d_lr_mult=0.1",
    "fp16=True",
    "num_workers=12",
    "betas=[0,0.99]",
    "rp_w_cfg.equalized_lr=True",
    "rp_w_cfg.use_sg3_ff=True",
    "rp_w_cfg.D_kernel_size=5",
    "rp_w_cfg.D_block_repeats=[3,3,3,3]",
    "rp_w_cfg.r1_gamma=0.1",
]
REFERENCE_G_PLUS_R1_D_S = 16.4  # reference loop, G step + R1 D step, batch 16, measured on these 2-core machines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as train_asgan.py: a fresh G's tiny outputs make subnormals in D (13x slower)
    cfg = parse_config(README_COMMAND + [f"batch_size={args.batch}", "checkpoint_path=unused", "train_root=unused"])
    engine = TorchEngine(cfg)
    assert engine.device.type == "cpu" and engine.precision == "fp32", "this bench is for the CPU in fp32"
    g, d = Generator(cfg.rp_w_cfg), Discriminator.from_config(cfg)
    g_opt, d_opt = training.build_optimizers(cfg, g, d)
    G, D = engine.wrap(g, g_opt), engine.wrap(d, d_opt)
    aug = Augmenter(training.ADA_NOISE_STD[cfg.data_type], cfg.aug_init_p)
    real = 0.3 * torch.randn(args.batch, cfg.rp_w_cfg.seq_len, cfg.c_dim)
    z = torch.randn(args.batch, cfg.z_dim)

    def d_step(r1):
        D.zero_grad()
        loss_d, r1_value, _, _ = training.d_forward(cfg, engine, G, D, aug, real.clone(), z, r1)
        D.backward(loss_d + r1_value)
        D.step()

    def g_step():
        G.zero_grad()
        loss_g, *_ = training.g_forward(cfg, engine, G, D, aug, real.clone(), z)
        G.backward(loss_g)
        G.step()

    fg, fd = generator_flops(g) * args.batch / 1e9, discriminator_flops(d) * args.batch / 1e9
    print(f"machine: {machine()}; batch {args.batch}; G fwd {fg:.2f} GFLOP, D fwd {fd:.2f} GFLOP per batch")
    times = {}
    for name, fn, gflop in (
        ("D step", lambda: d_step(False), fg + 6 * fd),
        ("D step + R1", lambda: d_step(True), fg + 9 * fd),
        ("G step", g_step, 3 * fg + 2 * fd),
    ):
        peak = matmul_peak_gflops()  # measured next to each run, so load changes affect both alike
        times[name] = t = median_seconds(fn, repeats=args.repeats, warmup=1)
        print(
            f"{name:12s}: {t:7.3f} s  {gflop:7.1f} GFLOP  {gflop / t:6.1f} GFLOP/s  "
            f"{100 * gflop / t / peak:5.1f}% of matmul peak ({peak:.0f} GFLOP/s)"
        )
    peak = matmul_peak_gflops()
    both, gflop = times["G step"] + times["D step + R1"], 4 * fg + 11 * fd
    line = f"G step + R1 D step: {both:.3f} s = {100 * gflop / both / peak:.1f}% of matmul peak ({peak:.0f} GFLOP/s)"
    if args.batch == 16:  # the batch of the reference's measurement
        ref = REFERENCE_G_PLUS_R1_D_S
        line += f"; the reference's {ref} s is {100 * gflop / ref / peak:.1f}% at this peak: {ref / both:.1f}x"
    print(f"{line}; peak memory {peak_memory_gb():.2f} GB")


if __name__ == "__main__":
    main()
