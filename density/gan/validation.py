"""Validation during training (reference note 33): the metrics and tensorboard figures of the training G on the
validation set, the FAD reference statistics, and the HuBERT encoder of the melspec/wav FAD.

    to_audio = sample_vocoder(cfg, device)            # None: no audio (hubert_L6 without fad_vocoder)
    encode = fad_encoder(cfg, device, to_audio)       # None: FAD on the frames themselves
    real_stats = real_statistics(valid_ds, encode)
    fad_value = validate(cfg, G.module, D.module, valid_loader, real_stats, writer, steps, device, norm, encode,
                         audio=(sample_latents(cfg), to_audio))  # audio=None: no audio samples
"""

import contextlib
import random

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from density.audio.plots import feature_frames_figure, histogram_figure
from density.audio.signal import REFERENCE_MEL_PAD, SAMPLE_RATE
from density.config import ConfigError
from density.losses import discriminator_loss, generator_loss
from density.metrics import ApproxKL, closest_dist_pair, fad, feature_statistics, perc_closest
from density.runtime.run import seed_all
from density.vocoders.vocoder import GriffinLimVocoder, load_vocoder

EMBED_FRAMES, NEAREST_N, PERC_N = 1000, 1000, 500  # validation: embedding frames, closest_dist_pair, perc_closest
FAD_LAYER = 6  # HuBERT block whose output the melspec/wav FAD compares (reference note 33)
FAD_CHUNK = 32  # validation items vocoded and HuBERT-encoded per batch for the FAD reference statistics


def sample_vocoder(cfg, device):
    """What turns generated frames (B, L, C) into waveforms (B, T): fad_vocoder when set, else Griffin-Lim for
    log-mels and the frames themselves for wav; None for hubert_L6 features without fad_vocoder."""
    if cfg.fad_vocoder:
        try:
            vocoder = load_vocoder(cfg.fad_vocoder, device)
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f"fad_vocoder={cfg.fad_vocoder}: {e}") from e
        in_dim = getattr(getattr(vocoder, "cfg", None), "in_dim", cfg.c_dim)
        if in_dim != cfg.c_dim:
            raise ConfigError(
                f"fad_vocoder={cfg.fad_vocoder} takes {in_dim}-d frames, the model makes "
                f"c_dim={cfg.c_dim}: give a vocoder for these features"
            )
    elif cfg.data_type == "melspec":
        vocoder = GriffinLimVocoder().to(device)
    elif cfg.data_type == "wav":
        return lambda x: x.squeeze(-1)
    else:
        return None
    return lambda x: vocoder(x).squeeze(1)


def fad_encoder(cfg, device, to_audio):
    """The FAD features (reference note 33) of melspec/wav data, or None (fad_hubert_checkpoint unset: raw frames).

    Returns encode: (B, L, C) log-mels or waveforms (C = 1), made waveforms by `to_audio` (sample_vocoder) ->
    (B * frames, dim) HuBERT layer-6 features on the CPU.
    """
    if not cfg.fad_hubert_checkpoint:
        return None
    from density.features.hubert import HubertFeatureReader  # imports transformers: only when this route is used

    try:
        reader = HubertFeatureReader(cfg.fad_hubert_checkpoint, layer=FAD_LAYER, device=device)
    except (OSError, ValueError) as e:
        raise ConfigError(f"fad_hubert_checkpoint={cfg.fad_hubert_checkpoint}: {e}") from e

    @torch.no_grad()
    def encode(x):
        return reader.get_feats_batched(to_audio(x)).flatten(0, 1).cpu()

    return encode


def sample_latents(cfg):
    """The fixed z (audio_samples, z_dim) of the validation audio: seeded with cfg.seed, drawn like the dataset's
    (mean z_mean, variance z_std)."""
    z = torch.randn(cfg.audio_samples, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    return cfg.z_mean + cfg.z_std**0.5 * z


def real_statistics(valid_ds, encode=None):
    """FAD reference statistics: mean and unbiased covariance of all frames of the uncropped validation items.

    With `encode` (see fad_encoder) of their HuBERT features instead: the items are padded to the longest one
    (log-mels at the front with REFERENCE_MEL_PAD, waveforms at the end with zeros) and encoded FAD_CHUNK at a time.
    """
    items = [valid_ds.load(i) for i in tqdm(range(len(valid_ds)), desc="validation statistics", unit="item")]
    if encode is None:
        return feature_statistics(torch.cat([x.reshape(x.shape[0], -1) for x in items]))
    n = max(x.shape[0] for x in items)
    if valid_ds.data_type == "melspec":
        items = [F.pad(x, (0, 0, n - x.shape[0], 0), value=REFERENCE_MEL_PAD) for x in items]  # (n, 128) each
    else:
        items = [F.pad(x, (0, n - x.shape[0]))[:, None] for x in items]  # (n, 1) each
    chunks = tqdm(range(0, len(items), FAD_CHUNK), desc="validation statistics (HuBERT)", unit="batch")
    return feature_statistics(torch.cat([encode(torch.stack(items[k : k + FAD_CHUNK])) for k in chunks]))


@contextlib.contextmanager
def seeded(seed, device):
    """Run with python/numpy/torch generators seeded to `seed`, then put the previous states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        seed_all(seed)
        yield
    random.setstate(py_state), np.random.set_state(np_state)


@torch.no_grad()
def validate(cfg, g, d, loader, real_stats, writer, steps, device, norm, encode=None, audio=None):
    """Reference note 33 on the training G (eval mode, fp32): losses, ApproxKL, nearest-neighbour metrics, FAD
    (on the frames, or on encode(fake) from fad_encoder). D sees features normalised with `norm` (a
    FeatureNorm), as in training; the metrics compare raw-scale features. With audio=(z, to_audio)
    (sample_latents, sample_vocoder): tensorboard audio `audio/sample_k` of G(z), the same z every time.

    Seeded with cfg.seed each time: every validation sees the same z and crops, and the training random
    streams are left as they were (so resuming is exact whatever the validation schedule).
    """
    with seeded(cfg.seed, device):
        loader.generator.manual_seed(cfg.seed)
        fad_value = _validate(cfg, g, d, loader, real_stats, writer, steps, device, norm, encode)
    if audio is not None:
        write_audio(g, *audio, writer=writer, steps=steps, device=device, norm=norm)
    return fad_value


def write_audio(g, z, to_audio, *, writer, steps, device, norm):
    """Tensorboard audio `audio/sample_k` (16 kHz) of G(z) (eval mode), de-normalised and made waveforms."""
    g.eval()
    wavs = to_audio(norm.denormalize(g(z.to(device)))).float().cpu()
    g.train()
    for k, wav in enumerate(wavs):
        writer.add_audio(f"audio/sample_{k}", wav.clamp(-1, 1), steps, sample_rate=SAMPLE_RATE)


def _validate(cfg, g, d, loader, real_stats, writer, steps, device, norm, encode):
    g.eval(), d.eval()
    approx_kl, fakes, g_losses, d_losses, d_fakes, d_reals = ApproxKL(), [], [], [], [], []
    for j, (real, _, _, z) in enumerate(tqdm(loader, desc=f"validation @ {steps}", unit="batch", leave=False)):
        real, z = real.to(device), z.to(device)
        fake = g(z, cfg.rp_w_cfg.seq_len)
        d_fake, d_real = d(fake), d(norm.normalize(real))
        fake = norm.denormalize(fake)
        g_losses.append(generator_loss(d_fake).item())
        d_losses.append(discriminator_loss(d_real, d_fake).item())
        d_fakes.append(d_fake.flatten().cpu()), d_reals.append(d_real.flatten().cpu())
        approx_kl.accumulate(real, fake)
        fakes.append(encode(fake) if encode else fake.flatten(0, 1).cpu())
        if j > 0:
            continue
        real_f, fake_f = real.flatten(0, 1), fake.flatten(0, 1)
        if steps % (10 * cfg.validation_interval) == 0:
            n = min(EMBED_FRAMES, real_f.shape[0])
            writer.add_embedding(
                torch.cat([real_f[:n], fake_f[:n]]).cpu(),
                ["real"] * n + ["fake"] * n,
                global_step=steps,
                tag="validation/frames",
            )
        fake_nearest, real_nearest = closest_dist_pair(real_f, fake_f, NEAREST_N, NEAREST_N)
        writer.add_scalars(
            "validation/min_cosim_dists",
            {"c_fake_nearest_dist": fake_nearest.mean().item(), "c_real_nearest_dist": real_nearest.mean().item()},
            steps,
        )
        writer.add_histogram("validation/c_fake_nearest_dists", fake_nearest, steps)
        writer.add_histogram("validation/c_real_nearest_dists", real_nearest, steps)
        fake_to_real, real_to_fake = perc_closest(real_f, fake_f, n=PERC_N)
        writer.add_scalar("validation/fake_closest_to_real_perc", fake_to_real, steps)
        writer.add_scalar("validation/real_closest_to_fake_perc", real_to_fake, steps)
        if cfg.data_type == "melspec":
            writer.add_figure("mel/generated_mels", feature_frames_figure(fake), steps)
    g.train(), d.train()
    fad_value = fad(torch.cat(fakes), *real_stats)
    writer.add_histogram("validation/D(G(z))", torch.cat(d_fakes), steps)
    writer.add_histogram("validation/D(c)", torch.cat(d_reals), steps)
    writer.add_scalar("validation/g_loss", float(np.mean(g_losses)), steps)
    writer.add_scalar("validation/d_loss", float(np.mean(d_losses)), steps)
    writer.add_scalar("validation/fad", fad_value, steps)
    writer.add_scalar("validation/approx_kl_div", approx_kl.compute(), steps)
    writer.add_figure(
        "validation/c_val_hist",
        histogram_figure(
            approx_kl.edges[:-1].numpy(),
            {"real": approx_kl.real_counts, "fake": approx_kl.fake_counts},
            "feature value (clamped to [-1.2, 1.2])",
        ),
        steps,
    )
    if device.type == "cuda":
        writer.add_scalar("memory/max_allocated_gb", torch.cuda.max_memory_allocated(device) / 1e9, steps)
        writer.add_scalar("memory/max_reserved_gb", torch.cuda.max_memory_reserved(device) / 1e9, steps)
    return fad_value
