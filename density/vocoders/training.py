"""The pieces of vocoder training (train_vocoder.py): discriminators, losses, aligned (feature, waveform) segments.

HiFi-GAN's recipe (Kong et al. 2020): a multi-period discriminator (periods 2, 3, 5, 7, 11) and a multi-scale
discriminator (3 scales: the waveform, then twice average-pooled by 2; the first with spectral norm), a
least-squares adversarial loss, feature matching (x 2) and an L1 loss between log-mels (x 45). The log-mel is this
project's front end, `density.audio.signal.log_mel`, which is also what the mel vocoders take as input.
`Discriminators(width)` scales every discriminator's channels (1.0: HiFi-GAN's; 0.25 is a CPU size).

Data: `VocoderClips` pairs a split CSV's clips with their features, from the feature cache written by
hubert_feature_reader.py (`feature_root`, as train_asgan.py reads it) or, for log-mels, computed from the wav.
Frame f covers samples [f * hop, (f + 1) * hop): `log_mel` gives T // 160 frames whose frame j is centred on
sample j * 160 + 80 (GriffinLimVocoder's offset), HuBERT T // 320 frames of 320 samples; so a segment starting
at frame f starts at sample f * hop in the audio.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm, weight_norm
from torch.utils.data import Dataset

from density.audio.signal import CLIP_SAMPLES, LOG_MEL_SILENCE, fit_length, load_audio, log_mel
from density.dataset import DatasetError, feature_path, load_feature_file
from density.vocoders.vocoder import LRELU_SLOPE

PERIODS = (2, 3, 5, 7, 11)
N_SCALES = 3
MEL_WEIGHT = 45.0  # HiFi-GAN's weights of the generator loss terms
FM_WEIGHT = 2.0
STFT_SIZES = (512, 1024, 2048)  # multi-resolution STFT distance (a metric, not a training loss)
STFT_FLOOR_DB = -80.0  # STFT magnitudes are floored this far below a full-scale sine's peak (n_fft / 4)
PAD_VALUE = {"melspec": LOG_MEL_SILENCE, "hubert_L6": 0.0}  # feature value of padded (silent) frames, per data_type


# ---------------------------------------------------------------- discriminators


def _channels(c, width):
    """HiFi-GAN's channel count c scaled by width, a multiple of 16 (the MSD's largest group count), >= 16."""
    return c if width == 1 else max(16, int(round(c * width / 16)) * 16)


def _conv_stack(convs, conv_post, x):
    """Convolutions with leaky ReLUs, then conv_post -> (flattened logits, [every layer's output])."""
    fmaps = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmaps.append(x)
    x = conv_post(x)
    fmaps.append(x)
    return x.flatten(1), fmaps


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN DiscriminatorP: the waveform folded to (T / p, p), 2-D convolutions over the T / p axis."""

    def __init__(self, period, width=1.0, kernel_size=5, stride=3):
        super().__init__()
        self.period = period
        chans = [1] + [_channels(c, width) for c in (32, 128, 512, 1024, 1024)]
        pad = (kernel_size - 1) // 2
        self.convs = nn.ModuleList(
            [
                weight_norm(nn.Conv2d(c_in, c_out, (kernel_size, 1), (stride if i < 4 else 1, 1), padding=(pad, 0)))
                for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:]))
            ]
        )
        self.conv_post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x):
        """(B, 1, T) -> (logits (B, N), [feature maps])."""
        B, C, T = x.shape
        if T % self.period:
            x = F.pad(x, (0, self.period - T % self.period), "reflect")
        return _conv_stack(self.convs, self.conv_post, x.view(B, C, -1, self.period))


class ScaleDiscriminator(nn.Module):
    """HiFi-GAN DiscriminatorS: strided, grouped 1-D convolutions over the waveform."""

    LAYERS = (
        (128, 15, 1, 1),
        (128, 41, 2, 4),
        (256, 41, 2, 16),
        (512, 41, 4, 16),
        (1024, 41, 4, 16),
        (1024, 41, 1, 16),
        (1024, 5, 1, 1),
    )  # (channels, kernel, stride, groups)

    def __init__(self, width=1.0, use_spectral_norm=False):
        super().__init__()
        norm = spectral_norm if use_spectral_norm else weight_norm
        convs, c_in = [], 1
        for c, k, s, g in self.LAYERS:
            c_out = _channels(c, width)
            convs.append(norm(nn.Conv1d(c_in, c_out, k, s, groups=g if c_in > 1 else 1, padding=(k - 1) // 2)))
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.conv_post = norm(nn.Conv1d(c_in, 1, 3, 1, padding=1))

    def forward(self, x):
        """(B, 1, T) -> (logits (B, N), [feature maps])."""
        return _conv_stack(self.convs, self.conv_post, x)


class Discriminators(nn.Module):
    """The multi-period and multi-scale discriminators as one module (one optimiser, one DDP wrapper).

    forward((B, 1, T) waveforms) -> (logits, feature maps): one entry per sub-discriminator (5 periods, 3 scales).
    Real and generated audio go through in one batch, so that each training step calls it once.
    """

    def __init__(self, width=1.0, periods=PERIODS, n_scales=N_SCALES):
        super().__init__()
        self.width = width
        self.mpd = nn.ModuleList(PeriodDiscriminator(p, width) for p in periods)
        self.msd = nn.ModuleList(ScaleDiscriminator(width, use_spectral_norm=i == 0) for i in range(n_scales))
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, wav):
        logits, fmaps = [], []
        for d in self.mpd:
            out, f = d(wav)
            logits.append(out), fmaps.append(f)
        x = wav
        for i, d in enumerate(self.msd):
            if i:
                x = self.pool(x)
            out, f = d(x)
            logits.append(out), fmaps.append(f)
        return logits, fmaps


# ---------------------------------------------------------------- losses


def discriminator_loss(real_logits, fake_logits):
    """Least squares: sum over sub-discriminators of mean (1 - D(real))^2 + mean D(fake)^2."""
    return sum(torch.mean((1 - r.float()) ** 2) + torch.mean(f.float() ** 2) for r, f in zip(real_logits, fake_logits))


def generator_adv_loss(fake_logits):
    """Least squares: sum over sub-discriminators of mean (1 - D(G(c)))^2."""
    return sum(torch.mean((1 - f.float()) ** 2) for f in fake_logits)


def feature_matching_loss(real_fmaps, fake_fmaps):
    """Sum over sub-discriminators and layers of mean |D_l(real) - D_l(G(c))| (real maps detached)."""
    return sum(
        torch.mean(torch.abs(r.detach().float() - f.float()))
        for rs, fs in zip(real_fmaps, fake_fmaps)
        for r, f in zip(rs, fs)
    )


def log_mel_l1(fake, real, reduce=True):
    """Mean |log_mel(fake) - log_mel(real)| of (B, T) or (B, 1, T) waveforms: a scalar, or (B,) per clip."""
    d = (log_mel(fake.reshape(fake.shape[0], -1)) - log_mel(real.reshape(real.shape[0], -1))).abs()
    return d.mean() if reduce else d.mean((1, 2))


def stft_magnitude(wav, n_fft):
    window = torch.hann_window(n_fft, device=wav.device)
    return torch.stft(wav.float(), n_fft, n_fft // 4, window=window, return_complex=True).abs()


def mr_stft_distance(fake, real, sizes=STFT_SIZES):
    """Multi-resolution STFT distance per clip of (B, T) waveforms -> {'mr_stft', 'sc', 'log_mag'} of (B,) tensors.

    At each FFT size (hop size / 4, Hann window): spectral convergence ||R| - |F||_F / ||R||_F plus the mean
    |log |R| - log |F||; `mr_stft` = sc + log_mag, each averaged over the sizes. Magnitudes are floored at
    STFT_FLOOR_DB (-80 dB) relative to the peak magnitude of a full-scale sine, n_fft / 4: differences further
    down are inaudible, and an absolute floor such as 1e-5 would let the digital silence of the digits corpus (70 %
    of its samples) dominate the log term, scoring noise at -100 dB instead of the speech.
    """
    fake, real = fake.reshape(fake.shape[0], -1), real.reshape(real.shape[0], -1)
    sc, log_mag = 0, 0
    for n_fft in sizes:
        f, r = stft_magnitude(fake, n_fft), stft_magnitude(real, n_fft)
        floor = n_fft / 4 * 10 ** (STFT_FLOOR_DB / 20)
        sc = sc + torch.linalg.vector_norm(r - f, dim=(1, 2)) / torch.linalg.vector_norm(r, dim=(1, 2)).clamp_min(floor)
        log_mag = log_mag + (r.clamp_min(floor).log() - f.clamp_min(floor).log()).abs().mean((1, 2))
    sc, log_mag = sc / len(sizes), log_mag / len(sizes)
    return {"mr_stft": sc + log_mag, "sc": sc, "log_mag": log_mag}


# ---------------------------------------------------------------- data


class VocoderClips(Dataset):
    """(features (frames, C), waveform (frames * hop,)) pairs of audio files.

    paths: the clips (a split CSV's); feature_root: their feature cache (density.dataset.feature_path), or None
    to compute log-mels from the wav (data_type melspec only). A clip's features are cut to T // hop frames and
    its audio to frames * hop samples. segment_frames: items are cut to this many frames (audio: * hop samples)
    at the same place, a random start (drawn from (seed, epoch, index), so it depends on nothing else; call
    `set_epoch`) or, with random_crop=False, the start; shorter clips are padded with silence (zeros, and
    log-mels of silence / zero HuBERT frames). None: whole clips.
    """

    def __init__(
        self,
        paths,
        *,
        data_type,
        hop,
        in_dim,
        feature_root=None,
        segment_frames=None,
        random_crop=True,
        seed=0,
        labels=None,
        resample=False,
    ):
        if data_type not in PAD_VALUE:
            raise DatasetError(f"data_type={data_type}: choose one of {sorted(PAD_VALUE)}")
        if data_type != "melspec" and not feature_root:
            raise DatasetError(
                f"data_type={data_type} reads its features from the cache: set feature_root=<folder "
                "written by hubert_feature_reader.py>"
            )
        self.paths, self.labels = [str(p) for p in paths], labels
        self.features = [feature_path(p, feature_root) for p in self.paths] if feature_root else None
        if self.features:
            missing = [(a, f) for a, f in zip(self.paths, self.features) if not f.is_file()]
            if missing:
                raise DatasetError(
                    f"{len(missing)} of {len(self.paths)} clips have no cached features in {feature_root}, e.g. "
                    f"{missing[0][0]} -> {missing[0][1]}; extract them with `python hubert_feature_reader.py --csv "
                    f"<split csv> --out {feature_root} --type {data_type}`"
                )
        self.data_type, self.hop, self.in_dim = data_type, hop, in_dim
        self.segment_frames, self.random_crop, self.seed, self.epoch = segment_frames, random_crop, seed, 0
        self.resample = resample

    def __len__(self):
        return len(self.paths)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def load(self, i):
        """Whole clip i: (features (L, C), waveform (L * hop,))."""
        wav = load_audio(self.paths[i], resample=self.resample)
        feats = load_feature_file(self.features[i]) if self.features else log_mel(wav).T
        if feats.dim() != 2 or feats.shape[1] != self.in_dim:
            where = self.features[i] if self.features else self.paths[i]
            raise DatasetError(
                f"{where}: features of shape {tuple(feats.shape)}, but the vocoder takes (frames, {self.in_dim})"
            )
        n = min(feats.shape[0], wav.shape[0] // self.hop)
        return feats[:n], wav[: n * self.hop]

    def start(self, i, n_frames):
        """First frame of item i's segment of a clip of n_frames frames."""
        spare = n_frames - self.segment_frames
        if spare <= 0 or not self.random_crop:
            return 0
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        return int(torch.randint(0, spare + 1, (), generator=g))

    def __getitem__(self, i):
        feats, wav = self.load(i)
        if self.segment_frames:
            L = self.segment_frames
            s = self.start(i, feats.shape[0])
            feats, wav = feats[s : s + L], wav[s * self.hop : (s + L) * self.hop]
            if feats.shape[0] < L:
                feats = F.pad(feats, (0, 0, 0, L - feats.shape[0]), value=PAD_VALUE[self.data_type])
                wav = F.pad(wav, (0, L * self.hop - wav.shape[0]))
        return feats, wav


def spaced(items, n):
    """n items evenly spaced over a list (a split CSV is sorted by label: its first n would be one word); all of
    them when n is 0 or at least their number."""
    if not n or n >= len(items):
        return list(items)
    return [items[k * len(items) // n] for k in range(n)]


def full_clip_frames(hop, n_samples=CLIP_SAMPLES):
    """Frames of a whole clip of n_samples (validation and evaluation score 1-s clips)."""
    return n_samples // hop


def vocode(model, feats, n_samples=None):
    """(B, L, C) features -> (B, T) waveforms, cut or padded (centred, density.audio.signal.fit_length) to n_samples."""
    wav = model(feats).reshape(feats.shape[0], -1).float()
    return wav if n_samples is None else fit_length(wav, n_samples)
