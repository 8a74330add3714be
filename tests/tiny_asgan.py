"""Tiny ASGAN checkpoints and HiFi-GANs for the hub and generate tests (fast on 2 CPU cores).

A freshly initialised generator's output is ~1e-9 (the un-normalised resampling filters shrink the signal
at every layer, reference note 14), so each layer's `norm_ema` is calibrated to the power of its input
(`Generator.calibrate_norm_ema`), which is what training's running mean converges to. The tiny HiFi-GAN
has zero biases and a calibrated output gain, so that its waveform depends on its input instead of being
dominated by the biases.
"""

import torch

from density.config import config_to_yaml, parse_config
from density.models import Generator
from density.vocoders.vocoder import HifiGAN, HifiGANConfig

FEATURE_DIM = 12  # c_dim of the tiny HuBERT-like model
TINY_SPECS = [[32, 3, 2.0]] * 5 + [[24, 3, 4.0]] * 4 + [[16, 3, 8.0]] * 3 + [[16, 3, 16.0]] * 2


def tiny_cfg(mel=False):
    c = 128 if mel else FEATURE_DIM
    cfg = parse_config(
        [
            "model=rp_w",
            "z_dim=16",
            f"c_dim={c}",
            "rp_w_cfg.z_dim=16",
            "rp_w_cfg.w_dim=16",
            f"rp_w_cfg.c_dim={c}",
            "rp_w_cfg.ff_channels=16",
            "rp_w_cfg.seq_len=16",
            f"rp_w_cfg.head_spec=[{c},1]",
        ]
        + (["preset=mel"] if mel else [])
    )
    cfg.rp_w_cfg.layer_specs = TINY_SPECS
    return cfg


def make_checkpoint(path, mel=False, ema=True):
    """Save cfg_yaml + g_ema_state_dict (or only g_state_dict, like the reference's ckpt_best_fad.pt) -> G."""
    torch.manual_seed(1)
    cfg = tiny_cfg(mel)
    g = Generator(cfg.rp_w_cfg).eval()
    g.calibrate_norm_ema(torch.randn(64, g.z_dim))
    key = "g_ema_state_dict" if ema else "g_state_dict"
    torch.save({"cfg_yaml": config_to_yaml(cfg), key: g.state_dict(), "steps": 10}, path)
    return g


def tiny_vocoder():
    """A 16-channel HiFi-GAN for FEATURE_DIM features (hop 320), weight norm still on, output std ~0.2."""
    torch.manual_seed(2)
    v = HifiGAN(HifiGANConfig(FEATURE_DIM, [10, 8, 2, 2], [20, 16, 4, 4], upsample_initial_channel=16)).eval()
    with torch.no_grad():
        for name, p in v.named_parameters():
            if name.endswith("bias"):
                p.zero_()
        y = v(torch.randn(4, 16, FEATURE_DIM))
        v.conv_post.parametrizations.weight.original0.mul_(0.2 / y.std())
    return v
