"""Vocoder speed: 1-s clips through each named vocoder (random weights, fp32, inference mode), then end to end.

Sections (`--sections`):
- `inference`: for every vocoder of `--vocoders` and batch of `--batches`, the median wav/s over `--repeats`
  rounds in which all vocoders run in turn (so that load changes on a shared machine hit them alike), the
  real-time factor, GFLOP per second of audio (convolutions and matmuls, counted by
  torch.utils.flop_counter.FlopCounterMode; the FFT and element-wise operations are not counted), the GFLOP/s
  reached and its share of the measured 2048^2 matmul throughput; then each iSTFT vocoder's speed-up over the
  HiFi-GAN V1 of the same features.
- `e2e`: z -> the paper's HuBERT generator (the released architecture) -> istft_hubert -> (B, 16000), batch
  `--e2e_batch`, timed in alternation with the generator alone.

On a CPU that other jobs also load, `--threads 1` can be much faster than torch's default (every operation
otherwise waits for its second thread to be scheduled), the more so for models of many small operations (iSTFT).

    python bench/bench_vocoder.py [--device cpu|cuda] [--batches 1 16] [--vocoders istft_hubert hifigan_hubert]
                                  [--sections inference e2e] [--threads 1]
"""

import argparse
import os
import platform
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_generate import interleaved_medians  # noqa: E402
from bench.common import cpu_name, machine, matmul_peak_gflops  # noqa: E402
from density.audio.signal import CLIP_SAMPLES, SAMPLE_RATE  # noqa: E402
from density.config import parse_config  # noqa: E402
from density.inference.asgan import OFFICIAL_OVERRIDES, ASGANInference  # noqa: E402
from density.models import Generator  # noqa: E402
from density.vocoders.vocoder import VOCODER_CONFIGS, HifiGAN, build_vocoder, vocoder_config  # noqa: E402

AUDIO_S = CLIP_SAMPLES / SAMPLE_RATE  # seconds of audio per clip
E2E_BAR = 20  # target wav/s end to end of the iSTFT HuBERT path on the 2-core CPU
SPEEDUP_BAR = 10  # iSTFT over HiFi-GAN V1 (same features), batch 16


def build(name, device):
    """A named vocoder, weight norm folded, eval mode."""
    torch.manual_seed(0)
    model = build_vocoder(*vocoder_config(name))
    if isinstance(model, HifiGAN):
        model.remove_weight_norm()
    return model.to(device).eval()


def frames(model, batch, device):
    """Random (batch, L, in_dim) features for 1-s clips."""
    return torch.randn(batch, CLIP_SAMPLES // model.cfg.hop, model.cfg.in_dim, device=device)


def gflop_per_audio_s(model, device):
    """Forward GFLOP (2 per multiply-add) of convolutions and matmuls per second of audio."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(frames(model, 1, device))
    return counter.get_total_flops() / 1e9 / AUDIO_S


def bench_inference(args, peak):
    models = {name: build(name, args.device) for name in args.vocoders}
    gflop = {name: gflop_per_audio_s(m, args.device) for name, m in models.items()}
    print("\n[inference] vocoder: params, GFLOP per second of audio")
    for name, m in models.items():
        print(f"  {name:18s} {sum(p.numel() for p in m.parameters()) / 1e6:6.2f} M  {gflop[name]:7.2f} GFLOP/s-audio")
    speed = {}
    with torch.inference_mode():
        for bs in args.batches:
            inputs = {name: frames(m, bs, args.device) for name, m in models.items()}
            fns = [lambda m=m, c=inputs[name]: m(c) for name, m in models.items()]
            times = interleaved_medians(fns, args.device, args.repeats)
            for name, t in zip(models, times):
                speed[name, bs] = bs / t
                achieved = gflop[name] * bs * AUDIO_S / t
                print(
                    f"batch {bs:3d} {name:18s} {bs / t:9.2f} wav/s  RTF {t / (bs * AUDIO_S):.4f}  "
                    f"{t * 1e3:9.1f} ms/batch  {achieved:6.1f} GFLOP/s = {100 * achieved / peak:5.1f}% of peak"
                )
    for bs in args.batches:
        for fast, slow in [("istft_hubert", "hifigan_hubert"), ("istft_mel", "hifigan_mel")]:
            if (fast, bs) in speed and (slow, bs) in speed:
                print(
                    f"batch {bs:3d}: {fast} is {speed[fast, bs] / speed[slow, bs]:.1f}x the wav/s of {slow}"
                    + (f" (bar: >= {SPEEDUP_BAR}x at batch 16)" if bs == 16 and fast == "istft_hubert" else "")
                )


def bench_e2e(args, peak):
    torch.manual_seed(0)
    cfg = parse_config(OFFICIAL_OVERRIDES)
    model = ASGANInference(Generator(cfg.rp_w_cfg), build("istft_hubert", args.device), cfg).to(args.device).eval()
    g, seq_len, bs = model.g, cfg.rp_w_cfg.seq_len, args.e2e_batch
    z = torch.randn(bs, model.z_dim)
    with torch.inference_mode():
        t_all, t_g = interleaved_medians(
            [lambda: model.generate_from_latent(z), lambda: g(z.to(args.device), seq_len)], args.device, args.repeats
        )
    print(
        f"\n[e2e] HuBERT generator + istft_hubert, batch {bs}: {bs / t_all:.2f} wav/s (bar: >= {E2E_BAR}), "
        f"RTF {t_all / (bs * AUDIO_S):.4f}, {t_all * 1e3:.1f} ms/batch; generator alone {bs / t_g:.2f} wav/s "
        f"({100 * t_g / t_all:.0f}% of the time)"
    )


SECTIONS = {"inference": bench_inference, "e2e": bench_e2e}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--vocoders", nargs="+", choices=list(VOCODER_CONFIGS), default=list(VOCODER_CONFIGS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--e2e_batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.device)
    print(
        f"machine: {machine(args.device)}; CPU {cpu_name()}, {os.cpu_count()} logical cores; "
        f"Python {platform.python_version()}, {platform.system()}; measured matmul peak {peak:.1f} GFLOP/s"
    )
    for name in args.sections:
        SECTIONS[name](args, peak)


if __name__ == "__main__":
    main()
