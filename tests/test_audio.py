"""Audio loading and the log-mel front end against the recorded torchaudio fixture."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from density.audio.signal import (
    SAMPLE_RATE,
    AudioError,
    fit_length,
    load_audio,
    log_mel,
    mel_filterbank,
    num_mel_frames,
    save_wav,
)


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return torch.load(fixtures_dir / "logmel" / "logmel_reference.pt", weights_only=True)


def test_filterbank_matches_fixture(ref):
    fb = mel_filterbank()
    assert fb.shape == (513, 128) and fb.dtype == torch.float32
    torch.testing.assert_close(fb, ref["mel_fbanks"], rtol=0, atol=1e-6)


def test_log_mel_matches_fixture(ref):
    out = log_mel(ref["wav"])
    assert out.shape == (2, 128, 100)
    torch.testing.assert_close(out, ref["logmel"], rtol=0, atol=1e-4)
    torch.testing.assert_close(log_mel(ref["wav_short"]), ref["logmel_short"], rtol=0, atol=1e-4)
    torch.testing.assert_close(log_mel(ref["wav"][1]), ref["logmel"][1], rtol=0, atol=1e-4)


def test_log_mel_silence_and_short_input():
    assert torch.allclose(log_mel(torch.zeros(16000)), torch.tensor(np.log(1e-5), dtype=torch.float32))
    with pytest.raises(ValueError, match="432"):
        log_mel(torch.zeros(400))


def test_load_mono_roundtrip(tmp_path):
    wav = 0.5 * torch.sin(torch.arange(SAMPLE_RATE) * 2 * np.pi * 440 / SAMPLE_RATE)
    save_wav(tmp_path / "a.wav", wav)
    assert os.listdir(tmp_path) == ["a.wav"]  # no temporary file left behind
    got = load_audio(tmp_path / "a.wav")
    assert got.shape == (SAMPLE_RATE,) and got.dtype == torch.float32
    torch.testing.assert_close(got, wav, rtol=0, atol=1 / 2**15)


def test_stereo_is_averaged(tmp_path):
    left, right = np.full(1000, 0.5, np.float32), np.full(1000, -0.25, np.float32)
    sf.write(tmp_path / "s.flac", np.stack([left, right], 1), SAMPLE_RATE)
    got = load_audio(tmp_path / "s.flac")
    assert got.shape == (1000,)
    torch.testing.assert_close(got, torch.full((1000,), 0.125), rtol=0, atol=1e-4)


def test_wrong_rate_refused_or_resampled(tmp_path):
    path = tmp_path / "r.wav"
    sf.write(path, 0.1 * np.ones(8000, np.float32), 8000)
    with pytest.raises(AudioError, match=r"r\.wav.*8000 Hz.*resample"):
        load_audio(path)
    up = load_audio(path, resample=True)
    assert up.shape == (16000,)
    torch.testing.assert_close(up[2000:-2000], torch.full((12000,), 0.1), rtol=0, atol=1e-3)


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"not audio at all"])
def test_corrupt_files_raise_audio_error(tmp_path, content):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="bad.wav"):
        load_audio(path)


def test_empty_and_missing(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="empty.wav.*no samples"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2] * 200, np.float32), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*NaN"):
        load_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize("n", [433, 592, 12000, 16000, 16159])
def test_num_mel_frames_is_what_log_mel_returns(n):
    assert log_mel(torch.zeros(n)).shape == (128, num_mel_frames(n)) and num_mel_frames(n) == n // 160
    assert num_mel_frames(432) == 0


def test_fit_length_centres():
    x = torch.arange(1.0, 6.0).repeat(2, 1)  # (2, 5)
    torch.testing.assert_close(fit_length(x, 8), torch.tensor([[0, 1, 2, 3, 4, 5, 0, 0.0]] * 2))
    torch.testing.assert_close(fit_length(x, 2), torch.tensor([[2, 3.0]] * 2))
    assert torch.equal(fit_length(x, 5), x)
