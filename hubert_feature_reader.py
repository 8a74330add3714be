"""HuBERT layer-L feature reader (reference note 41) on transformers' HubertModel; the feature-cache extraction command.

    python hubert_feature_reader.py --root data/sc09 --out data/sc09_hubert --type hubert_L6 \
        --checkpoint hubert_base_ls960.pt

The checkpoint is a fairseq HuBERT file (read safely without fairseq, see density/fairseq_checkpoint.py), a
transformers model folder or hub id (e.g. facebook/hubert-base-ls960), an already loaded fairseq checkpoint dict,
or a transformers HubertModel (used as is: its encoder is cut after `layer`).

Padding follows the reference: `get_feats` appends 320 - (T mod 320) zeros (a full 320 when T is already a multiple),
so a 1-s clip gives 50 frames. `get_feats_batched` computes that pad from the time axis (the reference used the
batch size) and layer-normalises each clip on its own (the reference normalised the whole batch jointly), so every
row equals `get_feats` of that clip. Audio longer than `max_chunk` samples (100 s) is encoded chunk by chunk; a
last chunk shorter than the 400-sample receptive field joins the one before it.
"""
import argparse
import csv
import logging
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from density import cli
from density.audio import SAMPLE_RATE, AudioError, load_audio, log_mel, num_mel_frames
from density.fairseq_checkpoint import hubert_config, hubert_state_dict, load_fairseq_checkpoint, task_normalize
from density.fileio import remove_stale_temporaries, save_torch, write_text

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = (".wav", ".flac")
REPORT_NAME = "extract_report.txt"
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

    def __init__(self, checkpoint_path, layer=6, max_chunk=1600000, device="cpu", downsample_factor=320,
                 normalize=None):
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
                raise ValueError(f"audio chunk of {chunk.shape[-1]} samples is shorter than HuBERT's "
                                 f"{self.receptive_field}-sample receptive field")
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


# ---------------------------------------------------------------- extraction command


def _feature_type(s):
    if re.fullmatch(r"hubert_L\d+|melspec", s) is None:
        raise argparse.ArgumentTypeError(f"--type must be hubert_L<layer> (e.g. hubert_L6) or melspec, got {s!r}")
    return s


def find_jobs(root=None, csv_path=None):
    """-> sorted [(audio path, output path relative to --out)].

    Tree mode mirrors the relative path (folders starting with '_', like Speech Commands' _background_noise_, are
    not utterances and are left out); CSV mode maps each `path` to '<parent folder>/<name>.pt' (reference note 27).
    Two inputs with one output name are a ValueError naming both.
    """
    if csv_path is not None:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise ValueError(f"{csv_path}: no 'path' column (expected a split CSV with columns path,label)")
            paths = [Path(row["path"]) for row in reader]
        jobs = sorted((p, Path(p.parent.name) / p.with_suffix(".pt").name) for p in paths)
    else:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"--root {root} is not a directory")
        jobs = [(p, p.relative_to(root).with_suffix(".pt")) for p in sorted(root.rglob("*"))
                if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                and not any(d.startswith("_") for d in p.relative_to(root).parts[:-1])]
    sources = {}
    for src, rel in jobs:
        if rel in sources and sources[rel] != src:
            raise ValueError(f"{sources[rel]} and {src} would both be written to {rel}: rename one of them or "
                             "list only one of them in the input")
        sources[rel] = src
    return jobs


def _is_done(path):
    """True if `path` holds a loadable 2-D feature tensor (a finished output of an earlier run)."""
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or foreign file: (re)compute it
        return False
    return isinstance(t, torch.Tensor) and t.dim() == 2


class Featurizer:
    """Batched (B, T) equal-length 16 kHz clips -> (B, frames, dim) for --type hubert_L<n> or melspec."""

    def __init__(self, kind, checkpoint, device):
        self.reader = None
        if kind != "melspec":
            self.reader = HubertFeatureReader(checkpoint, layer=int(kind[len("hubert_L"):]), device=device)
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


def extract_all(jobs, out, featurize, batch_size=16, resample=False):
    """Write one (frames, dim) float32 tensor per job under `out`, skipping finished outputs and bad files.

    Clips are batched with others of the same length, so each output equals the single-clip result. Any error
    reading or encoding a file skips that file with a message; failing to write an output (WriteError) stops.
    Temporaries of killed earlier runs are removed first.
    Returns (n_written, n_already_done, [message for each skipped file]).
    """
    out = Path(out)
    remove_stale_temporaries(out, recursive=True)
    todo = [(src, out / rel) for src, rel in jobs if not _is_done(out / rel)]
    buckets, skipped, written = defaultdict(list), [], 0

    def flush(items):
        try:
            feats = featurize(torch.stack([wav for _, wav, _ in items]))
        except Exception as e:
            if len(items) > 1:  # find the clip that fails: encode them one by one
                return sum(flush([item]) for item in items)
            skipped.append(f"{items[0][0]}: feature extraction failed ({type(e).__name__}: {e})")
            return 0
        for feat, (_, _, dst) in zip(feats, items):
            save_torch(feat.to("cpu", copy=True), dst)  # copy: store this clip only, not the batch storage
        return len(items)

    bar = tqdm(todo, desc="extracting", unit="file", dynamic_ncols=True)
    for src, dst in bar:
        try:
            wav = load_audio(src, SAMPLE_RATE, resample=resample)
        except AudioError as e:
            skipped.append(str(e))
            continue
        except Exception as e:  # a decoder fault on one file must not stop the run
            skipped.append(f"{src}: cannot read audio ({type(e).__name__}: {e})")
            continue
        if featurize.num_frames(len(wav)) == 0:
            skipped.append(f"{src}: only {len(wav)} samples, too short to give one feature frame")
            continue
        bucket = buckets[len(wav)]
        bucket.append((src, wav, dst))
        if len(bucket) == batch_size:
            written += flush(bucket)
            bucket.clear()
        bar.set_postfix(skipped=len(skipped), refresh=False)  # redrawn at tqdm's own pace, not once per file
    for bucket in buckets.values():
        if bucket:
            written += flush(bucket)
    return written, len(jobs) - len(todo), skipped


def main(argv=None):
    """The command line (density/cli.py: a user error is one `error: ...` line and status 2) -> 0."""
    return cli.run(extract_command, argv)


def extract_command(argv):
    p = cli.ArgumentParser(
        description="Extract a feature cache (one <name>.pt tensor of shape (frames, dim) per utterance) from a "
                    "Speech-Commands-style tree or a split CSV. Re-running skips finished outputs; unreadable, "
                    "empty, too short or wrong-rate files are skipped and listed in <out>/" + REPORT_NAME + ".")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="audio tree (.wav/.flac, 16 kHz); outputs mirror its relative paths. "
                                    "Folders starting with '_' (e.g. _background_noise_) are left out")
    src.add_argument("--csv", help="split CSV from split_data.py (column 'path'); outputs go to <label>/<name>.pt")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--type", required=True, type=_feature_type, help="hubert_L6 (HuBERT block-6 output, 768-d "
                   "for HuBERT base, 50 frames/s) or melspec (128-band log-mel, 100 frames/s)")
    p.add_argument("--checkpoint", help="HuBERT weights: fairseq .pt (e.g. hubert_base_ls960.pt; fairseq not needed), "
                                        "transformers folder, or hub id (e.g. facebook/hubert-base-ls960)")
    p.add_argument("--batch_size", type=int, default=16, help="clips per forward pass (default 16)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resample", action="store_true",
                   help="resample audio that is not 16 kHz (polyphase) instead of skipping it")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch_size must be at least 1")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device {args.device}: not a device; use cpu, cuda or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but CUDA is not available; use --device cpu")
    if args.type != "melspec" and args.checkpoint is None:
        p.error("--checkpoint is required for HuBERT features: a fairseq .pt such as hubert_base_ls960.pt, "
                "a transformers folder, or a hub id like facebook/hubert-base-ls960")
    jobs = find_jobs(args.root, args.csv)  # OSError/ValueError: a bad --root/--csv, colliding names (density/cli.py)
    if not jobs:
        p.error(f"no .wav/.flac files found in {args.root or args.csv}")
    featurize = Featurizer(args.type, args.checkpoint, args.device)
    written, done, skipped = extract_all(jobs, args.out, featurize, args.batch_size, args.resample)
    lines = [f"{len(jobs)} files: {written} written, {done} already done, {len(skipped)} skipped"]
    lines += [f"skipped {msg}" for msg in skipped]
    report = Path(args.out) / REPORT_NAME
    write_text(report, "\n".join(lines) + "\n")
    print("\n".join(lines) + f"\nreport: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
