"""The torch.hub entry points (reference note 40), which hubconf.py at the repository root exposes.

    model = torch.hub.load('path/to/this/repo', 'asgan_hubert_sc09_6', source='local')  # or '<owner>/<repo>'
    audio = model.unconditional_generate(4)  # (4, 16000) float waveforms at 16 kHz

Every download URL can be overridden by an argument or an environment variable (ASGAN_CHECKPOINT_URL,
ASGAN_VOCODER_URL, ASGAN_HUBERT_URL), and an expected SHA-256 can be given the same way (ASGAN_*_SHA256;
the official files publish none). Files are cached in `model_dir` or `<torch.hub.get_dir()>/checkpoints`.
`device=None` picks CUDA when available; asking for CUDA without it falls back to the CPU with a warning.
"""

from density.inference import asgan as _inf
from density.runtime import download as _download
from density.runtime.engine import resolve_device
from density.vocoders import vocoder as _vocoder


def asgan_hubert_sc09_6(
    pretrained=True,
    progress=True,
    device=None,
    checkpoint_url=None,
    checkpoint_sha256=None,
    vocoder_url=None,
    vocoder_sha256=None,
    model_dir=None,
    pretrianed=None,
):
    """ASGAN trained on SC09 HuBERT layer-6 features + the HuBERT HiFi-GAN -> ASGANInference.

    pretrained=False gives the same architecture with random weights and an untrained HiFi-GAN (no download).
    `pretrianed` is the reference's spelling of `pretrained` and wins when given.
    """
    if pretrianed is not None:
        pretrained = pretrianed
    if not pretrained:
        return _inf.untrained_asgan(device).eval()
    # vocoder_url None: the checkpoint's data_type picks the vocoder (the official HiFi-GAN or $ASGAN_VOCODER_URL
    # for hubert_L6, Griffin-Lim for melspec)
    return _inf.load_asgan(
        _download.resolve(checkpoint_url, _inf.CHECKPOINT_URL_ENV, _inf.CHECKPOINT_URL),
        vocoder_url,
        device,
        _download.resolve(checkpoint_sha256, _inf.CHECKPOINT_SHA_ENV, None),
        _download.resolve(vocoder_sha256, _inf.VOCODER_SHA_ENV, None),
        model_dir,
        progress,
    )


def asgan_from_checkpoint(
    checkpoint, vocoder=None, device=None, checkpoint_sha256=None, vocoder_sha256=None, model_dir=None, progress=True
):
    """Your own training checkpoint (path or URL; `cfg_yaml` + `g_ema_state_dict`, or `g_state_dict` with a
    warning) -> ASGANInference. vocoder: path/URL of a vocoder file (`density.vocoder.save_vocoder`: HiFi-GAN or
    iSTFT; or a torch.package archive, see `hubert_hifigan`), or None for the official HuBERT HiFi-GAN (hubert_L6) /
    Griffin-Lim (melspec, no download)."""
    return _inf.load_asgan(checkpoint, vocoder, device, checkpoint_sha256, vocoder_sha256, model_dir, progress)


def hubert_hifigan(pretrained=True, progress=True, device=None, model_dir=None, url=None, sha256=None):
    """HiFi-GAN vocoder: HuBERT layer-6 features (N, L, 768) -> waveform (N, 1, 320 L).

    pretrained: the official `torch.package` archive (running code stored in it; only ever the official URL or
    the `url` / $ASGAN_VOCODER_URL you name). pretrained=False: an untrained HiFi-GAN of the same shape.
    """
    device = resolve_device(device)
    if not pretrained:
        return _vocoder.HifiGAN(_vocoder.hifigan_hubert_config()).remove_weight_norm().to(device).eval()
    return _vocoder.load_vocoder(
        _download.resolve(url, _inf.VOCODER_URL_ENV, _inf.VOCODER_URL),
        device,
        _download.resolve(sha256, _inf.VOCODER_SHA_ENV, None),
        model_dir,
        progress,
    )


def hubert_base(pretrained=True, progress=True, device=None, model_dir=None, url=None, sha256=None):
    """HuBERT-base (LibriSpeech 960 h, not fine-tuned) layer-6 feature reader -> HubertFeatureReader."""
    if not pretrained:
        raise ValueError("hubert_base exists only pretrained; an untrained HuBERT yields meaningless features")
    from density.features.hubert import HubertFeatureReader  # imports transformers: only when needed

    path = _download.fetch(
        _download.resolve(url, _inf.HUBERT_URL_ENV, _inf.HUBERT_URL),
        model_dir,
        _download.resolve(sha256, _inf.HUBERT_SHA_ENV, None),
        progress,
    )
    return HubertFeatureReader(str(path), layer=6, device=str(resolve_device(device)))
