"""Audio I/O and the log-mel front end of the mel variant (reference note 25), without torchaudio.

`load_audio` reads wav/flac with soundfile and returns mono float32 at 16 kHz: stereo (any multi-channel)
files are averaged to mono, as the reference HuBERT reader does; another sample rate is resampled only when
asked (`resample=True`), otherwise it is an error. `log_mel` reproduces torchaudio's
MelSpectrogram(n_fft 1024, hop 160, center False, power 1, Slaney mel scale and norm, 128 bands) after
reflect-padding, then log(max(mel, 1e-5)).
"""

import functools
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly

from density.runtime.fileio import atomic_path

SAMPLE_RATE = 16000  # SC09 / HuBERT rate
CLIP_SAMPLES = SAMPLE_RATE  # an SC09 clip (1 s): what the classifier reads and every generation call returns
N_FFT = 1024  # STFT size = window length
HOP = 160  # 10 ms hop -> 100 frames per second
N_MELS = 128  # mel bands
F_MAX = SAMPLE_RATE / 2  # top mel edge: Nyquist
PAD = (N_FFT - HOP) // 2  # 432 reflect-pad samples per side so a 1-s clip gives exactly 100 frames
LOG_FLOOR = 1e-5  # clamp before log
LOG_MEL_SILENCE = math.log(LOG_FLOOR)  # log-mel of digital silence: -11.51
# The reference's padding value for log-mel training items (the dataset's collate, FAD's real frames): a rounded
# LOG_MEL_SILENCE kept as the reference wrote it, so that padded batches match the reference exactly.
REFERENCE_MEL_PAD = -11.4

# Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, empty, non-finite, or at the wrong sample rate."""


def load_audio(path, sr=SAMPLE_RATE, resample=False):
    """Read a wav/flac file -> float32 (T,) mono at `sr`. Multi-channel audio is averaged to mono.

    Another sample rate is resampled (polyphase) if `resample` is True, else AudioError.
    """
    if not Path(path).is_file():
        raise AudioError(f"{path}: no such file")
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, channels)
    except (RuntimeError, OSError, sf.SoundFileError) as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: file holds no samples")
    if not np.isfinite(data).all():  # possible in float wavs: would turn every feature of the clip into NaN
        raise AudioError(f"{path}: holds NaN or infinite samples")
    wav = data.mean(axis=1)
    if file_sr != sr:
        if not resample:
            raise _rate_error(path, file_sr, sr)
        wav = resample_audio(wav, file_sr, sr).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(wav))


def _rate_error(path, file_sr, sr):
    return AudioError(
        f"{path}: sample rate is {file_sr} Hz, expected {sr} Hz; "
        "convert it or enable resampling (resample=True / --resample)"
    )


def check_audio_files(paths, sr=SAMPLE_RATE, resample=False):
    """Read only the headers: AudioError naming the first file that is missing, not audio, empty or, unless
    `resample`, not at `sr` Hz (so a long run fails before any work, not at the bad file)."""
    for path in paths:
        try:
            info = sf.info(str(path))
        except (RuntimeError, OSError, sf.SoundFileError) as e:
            raise AudioError(f"{path}: not a readable audio file ({e})") from e
        if info.frames == 0:
            raise AudioError(f"{path}: file holds no samples")
        if info.samplerate != sr and not resample:
            raise _rate_error(path, info.samplerate, sr)


def resample_audio(wav, sr_in, sr_out=SAMPLE_RATE):
    """Polyphase resampling of a numpy waveform (..., T) from sr_in to sr_out Hz (float64 out for float64 in)."""
    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(wav, int(sr_out) // g, int(sr_in) // g, axis=-1)


def fit_length(wav, n=SAMPLE_RATE):
    """(..., T) tensor -> (..., n): zero-pad floor((n-T)/2) on the left and the rest on the right, or centre-crop
    when T > n."""
    T = wav.shape[-1]
    if T > n:
        start = (T - n) // 2
        return wav[..., start : start + n]
    return F.pad(wav, ((n - T) // 2, n - T - (n - T) // 2))


def save_wav(path, wav, sr=SAMPLE_RATE):
    """Atomically write `wav` ((T,) or (T, channels), tensor or array, clipped to [-1, 1]) as 16-bit PCM wav.
    NaN or infinite samples are a ValueError naming `path` (nothing is written)."""
    path = Path(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().float().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if not np.isfinite(wav).all():
        raise ValueError(
            f"{path}: not written, the audio holds {np.count_nonzero(~np.isfinite(wav))} NaN or "
            "infinite samples (a diverged model or a bad --truncation?)"
        )
    wav = np.clip(wav, -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(tmp, wav, sr, subtype="PCM_16", format="WAV")


def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    return np.where(f >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(np.maximum(f, 1e-12) / _MIN_LOG_HZ) / _LOGSTEP, f / _F_SP)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), m * _F_SP)


@functools.cache
def _filterbank(n_fft=N_FFT, n_mels=N_MELS):
    all_freqs = np.linspace(0, SAMPLE_RATE // 2, n_fft // 2 + 1)  # (n_fft/2+1,) STFT bin centres
    f_pts = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(F_MAX), n_mels + 2))  # (n_mels+2,) band edges
    f_diff = np.diff(f_pts)  # (n_mels+1,)
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_fft/2+1, n_mels+2)
    down = -slopes[:, :-2] / f_diff[:-1]  # rising edge of each triangle
    up = slopes[:, 2:] / f_diff[1:]  # falling edge
    fb = np.maximum(0.0, np.minimum(down, up))  # (n_fft/2+1, n_mels) triangles with peak 1
    fb *= 2.0 / (f_pts[2:] - f_pts[:-2])  # Slaney norm: each triangle has unit area in Hz
    return torch.from_numpy(fb).float()


def mel_filterbank(n_fft=N_FFT, n_mels=N_MELS):
    """The (n_fft/2+1, n_mels) Slaney-normalised Slaney-scale mel filter bank, 0-8000 Hz at 16 kHz
    (default (513, 128), the log-mel front end's; librosa.filters.mel(norm='slaney') computes the same)."""
    return _filterbank(n_fft, n_mels).clone()


def num_mel_frames(n_samples):
    """Frames `log_mel` gives for n samples: (n + 2 PAD - N_FFT) // HOP + 1 = n // 160; 0 when n <= PAD (too short)."""
    return 0 if n_samples <= PAD else (n_samples + 2 * PAD - N_FFT) // HOP + 1


def log_mel(wav):
    """(..., T) float waveform at 16 kHz, T > 432 -> (..., 128, num_mel_frames(T)) log-mel."""
    if wav.shape[-1] <= PAD:
        raise ValueError(f"log_mel needs more than {PAD} samples, got {wav.shape[-1]}")
    lead = wav.shape[:-1]
    x = F.pad(wav.reshape(-1, wav.shape[-1]).float(), (PAD, PAD), mode="reflect")  # (N, T + 864)
    window = torch.hann_window(N_FFT, periodic=True, device=x.device)
    spec = torch.stft(
        x, N_FFT, hop_length=HOP, win_length=N_FFT, window=window, center=False, onesided=True, return_complex=True
    ).abs()  # (N, 513, frames)
    mel = torch.matmul(_filterbank().to(x.device).T, spec)  # (N, 128, frames)
    out = torch.log(torch.clamp(mel, min=LOG_FLOOR))
    assert out.shape[-2:] == (N_MELS, num_mel_frames(wav.shape[-1]))
    return out.reshape(*lead, N_MELS, out.shape[-1])
