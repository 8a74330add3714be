"""Vocoders: HiFi-GAN shapes and weight-norm folding, both checkpoint formats, Griffin-Lim inversion."""
import math

import pytest
import torch
from torch.package import PackageExporter

from density import audio
from density.vocoder import (GriffinLimVocoder, HifiGAN, HifiGANConfig, hubert_config, load_vocoder, mel_config,
                             save_vocoder)


def tiny_hifigan(in_dim=12):
    torch.manual_seed(0)
    return HifiGAN(HifiGANConfig(in_dim, [10, 8, 2, 2], [20, 16, 4, 4], upsample_initial_channel=16)).eval()


def test_full_size_configs_shapes():
    for cfg, hop in [(hubert_config(), 320), (mel_config(), 160)]:
        assert cfg.hop == hop
        model = HifiGAN(cfg).eval()
        with torch.inference_mode():
            y = model(torch.randn(2, 3, cfg.in_dim))
        assert y.shape == (2, 1, 3 * hop)
        assert y.abs().max() <= 1.0
    assert hubert_config().in_dim == 768 and mel_config().in_dim == 128


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


def test_griffin_lim_inverts_log_mel():
    t = torch.arange(audio.SAMPLE_RATE) / audio.SAMPLE_RATE
    envelope = torch.exp(-((t - 0.5) / 0.15) ** 2)
    wav = envelope * (0.5 * torch.sin(2 * math.pi * (200 * t + 300 * t ** 2)) + 0.2 * torch.sin(2 * math.pi * 1000 * t))
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
