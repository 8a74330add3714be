"""Vocoders: HiFi-GAN and iSTFT shapes and alignment, weight-norm folding, every file format, Griffin-Lim
inversion, and iSTFT vocoder files through generate.py and the hub entry."""

import math

import pytest
import soundfile as sf
import torch
from helpers import FEATURE_DIM, make_checkpoint
from torch.package import PackageExporter

from density.audio import signal as audio
from density.inference import generate
from density.inference import hub as hubconf
from density.vocoders.vocoder import (
    VOCODER_CONFIGS,
    GriffinLimVocoder,
    HifiGAN,
    HifiGANConfig,
    ISTFTConfig,
    ISTFTVocoder,
    build_vocoder,
    hifigan_hubert_config,
    hifigan_mel_config,
    istft_hubert_config,
    istft_mel_config,
    load_vocoder,
    save_vocoder,
    vocoder_config,
)


def tiny_hifigan(in_dim=12):
    torch.manual_seed(0)
    return HifiGAN(HifiGANConfig(in_dim, [10, 8, 2, 2], [20, 16, 4, 4], upsample_initial_channel=16)).eval()


def tiny_istft(in_dim=FEATURE_DIM, hop=320, n_fft=1280):
    torch.manual_seed(3)
    return ISTFTVocoder(ISTFTConfig(in_dim, hop=hop, n_fft=n_fft, dim=16, intermediate_dim=32, num_layers=2)).eval()


def test_full_size_configs_shapes():
    for cfg, hop in [(hifigan_hubert_config(), 320), (hifigan_mel_config(), 160)]:
        assert cfg.hop == hop
        model = HifiGAN(cfg).eval()
        with torch.inference_mode():
            y = model(torch.randn(2, 3, cfg.in_dim))
        assert y.shape == (2, 1, 3 * hop)
        assert y.abs().max() <= 1.0
    assert hifigan_hubert_config().in_dim == 768 and hifigan_mel_config().in_dim == 128


@pytest.mark.parametrize("L", [1, 2, 7, 50])
def test_istft_configs_shapes(L):
    for cfg, hop, in_dim in [(istft_hubert_config(), 320, 768), (istft_mel_config(), 160, 128)]:
        assert (cfg.hop, cfg.in_dim) == (hop, in_dim)
        model = ISTFTVocoder(cfg).eval()
        with torch.inference_mode():
            y = model(torch.randn(2, L, in_dim))
        assert y.shape == (2, 1, L * hop) and torch.isfinite(y).all() and y.abs().max() > 0
    with pytest.raises(ValueError, match=r"expects \(B, L, 128\) frames"):
        model(torch.randn(1, 3, 127))


def test_istft_trains():
    """Every parameter gets a finite, non-zero gradient from a loss on the waveform."""
    model = tiny_istft().train()
    loss = model(torch.randn(2, 5, FEATURE_DIM)).square().mean()
    loss.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0 for p in model.parameters()
    )


def test_small_hifigan_shapes():
    _, cfg = vocoder_config("hifigan_mel_small")
    model = build_vocoder("hifigan", cfg).remove_weight_norm().eval()
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 128)).shape == (2, 1, 3 * 160)
    assert (
        sum(p.numel() for p in model.parameters())
        < sum(p.numel() for p in HifiGAN(hifigan_mel_config()).parameters()) / 8
    )


def test_istft_inverts_log_mel_framing_exactly():
    """The STFT with log_mel's framing (reflect pad 432, n_fft 1024, hop 160, no centring) is inverted sample for
    sample: frame j of log_mel(wav) is frame j of the vocoder's inverse STFT, and sample t of the output is
    sample t of wav; with torch.istft's centring the same frames land 80 samples (hop/2) earlier."""
    model = ISTFTVocoder(
        ISTFTConfig(audio.N_MELS, hop=audio.HOP, n_fft=audio.N_FFT, dim=8, intermediate_dim=8, num_layers=1)
    )
    wav = torch.randn(2, audio.SAMPLE_RATE)
    padded = torch.nn.functional.pad(wav, (audio.PAD, audio.PAD), mode="reflect")
    window = torch.hann_window(audio.N_FFT)
    spec = torch.stft(padded, audio.N_FFT, audio.HOP, window=window, center=False, return_complex=True)
    assert spec.shape[-1] == audio.num_mel_frames(wav.shape[-1]) == 100
    torch.testing.assert_close(model.istft(spec), wav, rtol=0, atol=1e-5)
    centred = torch.istft(spec, audio.N_FFT, audio.HOP, window=window, center=True, length=99 * audio.HOP)
    torch.testing.assert_close(centred[:, 1000:15000], wav[:, 1080:15080], rtol=0, atol=1e-5)


def test_registry_and_build_vocoder():
    assert set(VOCODER_CONFIGS) == {"hifigan_hubert", "hifigan_mel", "hifigan_mel_small", "istft_hubert", "istft_mel"}
    assert vocoder_config("hifigan_hubert") == ("hifigan", hifigan_hubert_config())  # the released V1 shapes
    assert vocoder_config("istft_mel") == ("istft", istft_mel_config())
    model = build_vocoder(
        "istft", {"in_dim": 4, "hop": 160, "n_fft": 640, "dim": 8, "intermediate_dim": 8, "num_layers": 1}
    )
    assert isinstance(model, ISTFTVocoder) and model.training
    assert any(".parametrizations." in k for k in build_vocoder(*vocoder_config("hifigan_mel_small")).state_dict())
    with pytest.raises(ValueError, match="unknown vocoder config 'istft'; choose one of hifigan_hubert"):
        vocoder_config("istft")
    with pytest.raises(ValueError, match="unknown vocoder format 'vocos'; expected one of hifigan, istft"):
        build_vocoder("vocos", {})
    with pytest.raises(ValueError, match="not a ISTFTConfig"):
        build_vocoder("istft", {"in_dim": 4})
    with pytest.raises(ValueError, match="format 'istft' needs a ISTFTConfig"):
        build_vocoder("istft", hifigan_hubert_config())
    with pytest.raises(ValueError, match="n_fft 300, hop 160"):
        build_vocoder("istft", ISTFTConfig(4, hop=160, n_fft=300))


def test_remove_weight_norm_keeps_outputs():
    model = tiny_hifigan()
    c = torch.randn(2, 5, 12)
    with torch.no_grad():
        before = model(c)
        model.remove_weight_norm()
        after = model(c)
    assert not any(".parametrizations." in k for k in model.state_dict())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fold_first", [False, True])
def test_own_checkpoint_roundtrip(tmp_path, fold_first):
    model = tiny_hifigan()
    if fold_first:
        model.remove_weight_norm()
    c = torch.randn(1, 4, 12)
    with torch.no_grad():
        expected = model(c)
    save_vocoder(model, tmp_path / "voc.pt")
    loaded = load_vocoder(tmp_path / "voc.pt")
    assert not loaded.training
    assert not any(".parametrizations." in k for k in loaded.state_dict())  # folded for inference
    with torch.no_grad():
        torch.testing.assert_close(loaded(c), expected, rtol=1e-5, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["voc.pt"]  # atomic write leaves no temporary behind


@pytest.mark.parametrize("fmt", ["hifigan", "istft", "old_hifigan"])
def test_tagged_and_old_files_roundtrip(tmp_path, fmt):
    model = tiny_istft() if fmt == "istft" else tiny_hifigan()
    c = torch.randn(2, 6, 12)
    with torch.no_grad():
        expected = model(c)
    if fmt == "old_hifigan":  # the format written before the tag
        old_cfg = {
            "in_dim": 12,
            "upsample_rates": [10, 8, 2, 2],
            "upsample_kernel_sizes": [20, 16, 4, 4],
            "upsample_initial_channel": 16,
        }
        torch.save({"hifigan_cfg": old_cfg, "state_dict": model.state_dict()}, tmp_path / "voc.pt")
    else:
        save_vocoder(model, tmp_path / "voc.pt")
        saved = torch.load(tmp_path / "voc.pt", weights_only=True)
        assert set(saved) == {"format", "config", "state_dict"} and saved["format"] == fmt
        assert saved["config"]["in_dim"] == 12
    loaded = load_vocoder(tmp_path / "voc.pt")
    assert type(loaded) is type(model) and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(c), expected, rtol=1e-5, atol=1e-6)


def make_package(model, path):
    """A torch.package archive laid out like the official vocoder: the pickled module at ('.', 'hifigan_pkl.pt')."""
    with PackageExporter(str(path)) as exporter:
        exporter.intern("density.**")
        exporter.extern("**")
        exporter.save_pickle(".", "hifigan_pkl.pt", model)


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_torch_package_archive(tmp_path):
    model = tiny_hifigan().remove_weight_norm()
    make_package(model, tmp_path / "g_package.pth")
    loaded = load_vocoder(tmp_path / "g_package.pth", device="cpu")
    assert type(loaded).__module__.startswith("<torch_package_")  # the class came from the archive's own code
    assert not loaded.training
    c = torch.randn(2, 3, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(c), model(c))
    assert "runs Python code" in load_vocoder.__doc__


def test_bad_vocoder_files_are_clear_errors(tmp_path):
    save_vocoder(tiny_hifigan(), tmp_path / "voc.pt")
    data = (tmp_path / "voc.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt.*not a readable vocoder checkpoint"):
        load_vocoder(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*hifigan_cfg"):
        load_vocoder(tmp_path / "other.pt")
    torch.save({"hifigan_cfg": {"in_dim": 12}, "state_dict": {}}, tmp_path / "badcfg.pt")
    with pytest.raises(ValueError, match="badcfg.pt.*do not describe one HifiGAN"):
        load_vocoder(tmp_path / "badcfg.pt")
    odd = {"in_dim": 12, "upsample_rates": [10, 8], "upsample_kernel_sizes": [19, 16]}  # 19 - 10 is odd
    torch.save({"hifigan_cfg": odd, "state_dict": {}}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="odd.pt.*kernel 19 and rate 10"):
        load_vocoder(tmp_path / "odd.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_vocoder(tmp_path / "missing.pt")
    torch.save({"format": "vocos", "config": {}, "state_dict": {}}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"future\.pt: unknown vocoder format 'vocos'.*update this code"):
        load_vocoder(tmp_path / "future.pt")
    cfg = {"in_dim": 12, "hop": 320, "n_fft": 1280, "dim": 16, "intermediate_dim": 32, "num_layers": 3}
    torch.save({"format": "istft", "config": cfg, "state_dict": tiny_istft().state_dict()}, tmp_path / "layers.pt")
    with pytest.raises(ValueError, match=r"layers\.pt: its config and state_dict do not describe one ISTFTVocoder"):
        load_vocoder(tmp_path / "layers.pt")
    torch.save({"format": "istft", "config": {"in_dim": 12, "bins": 3}, "state_dict": {}}, tmp_path / "keys.pt")
    with pytest.raises(ValueError, match=r"keys\.pt: .*not a ISTFTConfig.*save_vocoder"):
        load_vocoder(tmp_path / "keys.pt")
    with pytest.raises(ValueError, match="cannot save a GriffinLimVocoder"):
        save_vocoder(GriffinLimVocoder(), tmp_path / "gl.pt")


def test_griffin_lim_inverts_log_mel():
    t = torch.arange(audio.SAMPLE_RATE) / audio.SAMPLE_RATE
    envelope = torch.exp(-(((t - 0.5) / 0.15) ** 2))
    wav = envelope * (0.5 * torch.sin(2 * math.pi * (200 * t + 300 * t**2)) + 0.2 * torch.sin(2 * math.pi * 1000 * t))
    target = audio.log_mel(wav[None])  # (1, 128, 100)
    gl = GriffinLimVocoder(n_iter=16)
    out = gl(target.transpose(1, 2))
    assert out.shape == (1, 1, 100 * audio.HOP)
    err = (audio.log_mel(out[:, 0]) - target).abs().mean()
    noise_err = (audio.log_mel(0.1 * torch.randn(1, audio.SAMPLE_RATE)) - target).abs().mean()
    assert err < 0.5 < 3.0 < noise_err
    torch.testing.assert_close(gl(target.transpose(1, 2)), out)  # fixed initial phase: deterministic
    with pytest.raises(ValueError, match="at least"):
        gl(target.transpose(1, 2)[:, :3])
    diverged = target.transpose(1, 2).clone()
    diverged[0, 40:60, :20] = 118.0  # a diverged generator's outlier (seen in a long demo run): exp overflows float32
    loud = gl(diverged)
    assert torch.isfinite(loud).all() and loud.abs().max() > 1e3  # clipped at the ceiling, still absurdly loud


def read_wavs(folder):
    return {p.name: torch.from_numpy(sf.read(str(p), dtype="float32")[0]) for p in sorted(folder.glob("*.wav"))}


def test_istft_file_through_generate_and_hub(tmp_path):
    g = make_checkpoint(tmp_path / "ckpt.pt")
    vocoder = tiny_istft()
    save_vocoder(vocoder, tmp_path / "istft.pt")
    generate.main(
        [
            "--checkpoint",
            str(tmp_path / "ckpt.pt"),
            "--vocoder",
            str(tmp_path / "istft.pt"),
            "--out_dir",
            str(tmp_path / "out"),
            "--n",
            "2",
            "--png_max",
            "0",
            "--no_progress",
            "--device",
            "cpu",
        ]
    )
    z = torch.randn(2, g.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = audio.fit_length(vocoder(g(z)).squeeze(1), audio.CLIP_SAMPLES)  # (2, 16000), 16 frames * 320 centred
    assert expected.abs().max() > 1e-3
    wavs = read_wavs(tmp_path / "out")
    for i in range(2):
        torch.testing.assert_close(wavs[f"seed0_{i:05d}.wav"], expected[i].clamp(-1, 1), rtol=0, atol=2 / 32768)
    model = hubconf.asgan_from_checkpoint(tmp_path / "ckpt.pt", vocoder=tmp_path / "istft.pt", device="cpu")
    assert isinstance(model.vocoder, ISTFTVocoder)
    torch.testing.assert_close(model.generate_from_latent(z), expected, rtol=1e-4, atol=1e-5)


def test_mel_vocoder_gets_denormalised_log_mels(tmp_path):
    """A checkpoint with `feature_norm` generates normalised log-mels; the vocoder is given them de-normalised."""
    g = make_checkpoint(tmp_path / "mel.pt", mel=True)
    ckpt = torch.load(tmp_path / "mel.pt", weights_only=True)
    mean, std = torch.linspace(-8, -2, 128), torch.linspace(1, 3, 128)
    ckpt["feature_norm"] = {"mean": mean, "std": std}
    torch.save(ckpt, tmp_path / "mel.pt")
    vocoder = tiny_istft(in_dim=audio.N_MELS, hop=audio.HOP, n_fft=audio.N_FFT)
    save_vocoder(vocoder, tmp_path / "istft_mel.pt")
    model = hubconf.asgan_from_checkpoint(tmp_path / "mel.pt", vocoder=tmp_path / "istft_mel.pt", device="cpu")
    z = torch.randn(2, g.z_dim)
    with torch.no_grad():
        expected = audio.fit_length(vocoder(g(z) * std + mean).squeeze(1), audio.CLIP_SAMPLES)
    torch.testing.assert_close(model.generate_from_latent(z), expected, rtol=1e-4, atol=1e-5)
