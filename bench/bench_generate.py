"""End-to-end generation speed: z -> generator -> vocoder -> (B, 16000) waveforms, full-size, random weights.

For each model and batch size: median waveforms/s of `generate_from_latent` (torch.inference_mode, fp32),
real-time factor (compute seconds per second of audio; < 1 is faster than real time), the share of time spent
in the vocoder (vocoder alone / (generator alone + vocoder alone)), and the HiFi-GAN's time with weight norm
still on (what folding it saves). The three are timed in alternation, so load changes hit them alike. Models:
`hubert` (released architecture + HuBERT HiFi-GAN), `mel` (mel preset + mel HiFi-GAN), `mel_gl` (mel preset +
32-iteration Griffin-Lim).

    python bench/bench_generate.py [--device cpu|cuda] [--batches 1 16] [--models hubert mel mel_gl]
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import cpu_name, machine, sync  # noqa: E402
from density.audio.signal import CLIP_SAMPLES, SAMPLE_RATE  # noqa: E402
from density.inference.asgan import untrained_asgan  # noqa: E402
from density.vocoders.vocoder import GriffinLimVocoder, HifiGAN  # noqa: E402

AUDIO_S = CLIP_SAMPLES / SAMPLE_RATE  # seconds of audio per returned waveform


def build(name, device):
    model = untrained_asgan(device, mel=name != "hubert")
    if name == "mel_gl":
        model.vocoder = GriffinLimVocoder().to(device)
    return model.eval()


def interleaved_medians(fns, device, repeats):
    """Median wall time of each fn, timed in alternation (one warm-up round) so that load changes hit all alike."""
    times = [[] for _ in fns]
    for r in range(repeats + 1):
        for fn, ts in zip(fns, times):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if r:
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def bench_model(name, batches, device, repeats):
    torch.manual_seed(0)
    model = build(name, device)  # built outside inference mode so that its weights stay ordinary parameters
    g, vocoder, seq_len = model.g, model.vocoder, model.cfg.rp_w_cfg.seq_len
    with_wn = HifiGAN(vocoder.cfg).to(device).eval() if isinstance(vocoder, HifiGAN) else None
    print(
        f"\n[{name}] G {sum(p.numel() for p in g.parameters()) / 1e6:.1f} M params, {type(vocoder).__name__} "
        f"{sum(p.numel() for p in vocoder.parameters()) / 1e6:.1f} M params"
    )
    with torch.inference_mode():
        for bs in batches:
            z = torch.randn(bs, model.z_dim)
            c = g(z.to(device), seq_len)
            fns = [
                lambda z=z: model.generate_from_latent(z),
                lambda z=z: g(z.to(device), seq_len),
                lambda c=c: vocoder(c),
            ]
            if with_wn is not None:
                fns.append(lambda c=c: with_wn(c))
            t_all, t_g, t_v, *t_wn = interleaved_medians(fns, device, repeats)
            print(
                f"batch {bs:3d}: {bs / t_all:8.2f} wav/s  RTF {t_all / (bs * AUDIO_S):.4f}  "
                f"{t_all * 1e3:9.1f} ms/batch  vocoder share {100 * t_v / (t_g + t_v):5.1f}%  "
                f"(G {t_g * 1e3:.1f} ms, vocoder {t_v * 1e3:.1f} ms"
                + (f"; with weight norm {t_wn[0] * 1e3:.1f} ms)" if t_wn else ")")
            )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--models", nargs="+", choices=["hubert", "mel", "mel_gl"], default=["hubert", "mel", "mel_gl"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(
        f"machine: {machine(args.device)}; CPU {cpu_name()}, {os.cpu_count()} logical cores; "
        f"Python {platform.python_version()}, {platform.system()}"
    )
    for name in args.models:
        bench_model(name, args.batches, args.device, args.repeats)


if __name__ == "__main__":
    main()
