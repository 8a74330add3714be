"""HuBERT layer-L feature reader (reference note 41) on transformers' HubertModel, and the Featurizer that extraction
and the latent tools share (HuBERT or log-mel frames of equal-length clips).

The checkpoint is a fairseq HuBERT file (read safely without fairseq, see density/features/fairseq_checkpoint.py), a
transformers model folder or hub id (e.g. facebook/hubert-base-ls960), an already loaded fairseq checkpoint dict,
or a transformers HubertModel (used as is: its encoder is cut after `layer`).

Padding follows the reference: `get_feats` appends 320 - (T mod 320) zeros (a full 320 when T is already a multiple),
so a 1-s clip gives 50 frames. `get_feats_batched` computes that pad from the time axis (the reference used the
batch size) and layer-normalises each clip on its own (the reference normalised the whole batch jointly), so every
row equals `get_feats` of that clip. Audio longer than `max_chunk` samples (100 s) is encoded chunk by chunk; a
last chunk shorter than the 400-sample receptive field joins the one before it.
"""

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from density.audio.signal import SAMPLE_RATE, load_audio, log_mel, num_mel_frames
from density.features.fairseq_checkpoint import (
    hubert_config,
    hubert_state_dict,
    load_fairseq_checkpoint,
    task_normalize,
)

log = logging.getLogger(__name__)
LEN_TOLERANCE = 160  # samples of |ref_len - len| tolerated before warning (reference value)


def _load_encoder(checkpoint):
    """-> (HubertModel, task normalize flag) from a fairseq file/dict, a transformers folder/hub id or a HubertModel."""
    from transformers import HubertModel

    if isinstance(checkpoint, HubertModel):
        return checkpoint, False
    if isinstance(checkpoint, dict) or Path(checkpoint).is_file():
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_fairseq_checkpoint(checkpoint)
        name = "checkpoint dict" if isinstance(checkpoint, dict) else checkpoint
        try:
            config = hubert_config(ckpt)
            model = HubertModel(config)
            model.load_state_dict(hubert_state_dict(ckpt, config), strict=True)
        except (KeyError, ValueError, RuntimeError) as e:  # e.g. a fine-tuned (CTC) or wav2vec 2.0 checkpoint
            raise ValueError(f"{name}: not a supported fairseq HuBERT pre-training checkpoint: {e}") from e
        return model, task_normalize(ckpt)
    if Path(checkpoint).suffix in (".pt", ".pth"):
        raise FileNotFoundError(f"HuBERT checkpoint {checkpoint} not found")
    return HubertModel.from_pretrained(str(checkpoint)), False


class HubertFeatureReader(nn.Module):
    """Output of transformer block `layer` (1-based) of a HuBERT model: 16 kHz audio -> (frames, dim) features."""

    def __init__(
        self, checkpoint_path, layer=6, max_chunk=1600000, device="cpu", downsample_factor=320, normalize=None
    ):
        super().__init__()
        model, task_norm = _load_encoder(checkpoint_path)
        n_layers = len(model.encoder.layers)
        if not 1 <= layer <= n_layers:
            raise ValueError(f"layer must be in 1..{n_layers} for this checkpoint, got {layer}")
        model.encoder.layers = model.encoder.layers[:layer]  # later blocks never influence block `layer`
        if model.config.do_stable_layer_norm:
            model.encoder.layer_norm = nn.Identity()  # pre-LN models norm after the last block; fairseq skips it
        self.model = model.eval().float().to(device)
        self.layer, self.max_chunk, self.downsample_factor = layer, max_chunk, downsample_factor
        self.device = torch.device(device)
        self.normalize = task_norm if normalize is None else normalize
        conv = model.config
        self.receptive_field, stride = 1, 1
        for k, s in zip(conv.conv_kernel, conv.conv_stride):
            self.receptive_field += (k - 1) * stride
            stride *= s
        self.hop = stride

    def _pad_len(self, n_samples):
        """Zeros appended to an n-sample clip: up to the next multiple of 320, a full 320 when aligned (reference)."""
        return self.downsample_factor - n_samples % self.downsample_factor

    def num_frames(self, n_samples):
        """Frames `get_feats` returns for an n-sample clip (0: too short for the conv front end)."""
        return max(0, (n_samples + self._pad_len(n_samples) - self.receptive_field) // self.hop + 1)

    def read_audio(self, path, ref_len=None):
        """16 kHz mono (T,) waveform of `path`; warns when it is more than 160 samples off `ref_len`."""
        wav = load_audio(path, SAMPLE_RATE)
        if ref_len is not None and abs(ref_len - len(wav)) > LEN_TOLERANCE:
            log.warning("%s: %d samples, expected about %d", path, len(wav), ref_len)
        return wav

    @torch.no_grad()
    def extract(self, x):
        """(B, T) waveforms, no padding added -> (B, frames, dim); fairseq's extract_features(output_layer=layer)."""
        if x.dim() != 2:
            raise ValueError(f"expected (B, T) audio, got {tuple(x.shape)}")
        x = x.float().to(self.device)
        if self.normalize:
            x = F.layer_norm(x, x.shape[-1:])  # each clip over its whole length, no affine, eps 1e-5
        feats, chunks = [], list(x.split(self.max_chunk, dim=-1))
        if len(chunks) > 1 and chunks[-1].shape[-1] < self.receptive_field:
            chunks[-2:] = [torch.cat(chunks[-2:], dim=-1)]  # never a tail the conv front end cannot encode
        for chunk in chunks:
            if chunk.shape[-1] < self.receptive_field:
                raise ValueError(
                    f"audio chunk of {chunk.shape[-1]} samples is shorter than HuBERT's "
                    f"{self.receptive_field}-sample receptive field"
                )
            feats.append(self.model(chunk).last_hidden_state)
        return torch.cat(feats, dim=1)

    def _pad(self, x):
        return F.pad(x, (0, self._pad_len(x.shape[-1])))

    def get_feats(self, file_path=None, ref_len=None, audio=None):
        """One clip (a file, or `audio` (T,)) -> (frames, dim) on the reader's device."""
        if (file_path is None) == (audio is None):
            raise ValueError("give exactly one of file_path or audio")
        x = self.read_audio(file_path, ref_len) if file_path is not None else torch.as_tensor(audio)
        if x.dim() != 1:
            raise ValueError(f"get_feats expects one mono clip (T,), got {tuple(x.shape)}")
        return self.extract(self._pad(x.float().to(self.device))[None])[0]

    def get_feats_batched(self, x):
        """(B, T) equal-length clips -> (B, frames, dim); row i equals get_feats(audio=x[i])."""
        if x.dim() != 2:
            raise ValueError(f"get_feats_batched expects (B, T) audio, got {tuple(x.shape)}")
        return self.extract(self._pad(x.float().to(self.device)))


class Featurizer:
    """Batched (B, T) equal-length 16 kHz clips -> (B, frames, dim) for --type hubert_L<n> or melspec."""

    def __init__(self, kind, checkpoint, device):
        self.reader = None
        if kind != "melspec":
            self.reader = HubertFeatureReader(checkpoint, layer=int(kind[len("hubert_L") :]), device=device)
        self.device = torch.device(device)

    def num_frames(self, n_samples):
        if self.reader is not None:
            return self.reader.num_frames(n_samples)
        return num_mel_frames(n_samples)

    @torch.no_grad()
    def __call__(self, x):
        if self.reader is not None:
            return self.reader.get_feats_batched(x)
        return log_mel(x.to(self.device)).transpose(1, 2)  # (B, frames, 128)
