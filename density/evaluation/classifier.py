"""The SC09 evaluation classifier: ResNeXt-29 on a 1x32x32 log-power mel image of a 1-s clip.

`classifier_input` is the front end of the SaShiMi / pytorch-speech-commands classifier, in torch: the clip is
cut or zero-padded at the end to 16000 samples, then librosa's melspectrogram (n_fft 2048, hop 512, periodic
Hann window, centred frames with reflect padding = librosa's default before 0.10, power 2, 32 Slaney mel bands
0-8 kHz) and power_to_db(ref=max, amin 1e-10, top_db 80): dB relative to the clip's maximum, floored at -80.

`ResNeXt` is that classifier's CifarResNeXt (same module names, so state dicts transfer) returning
(logits, features), features being the input of the final linear layer. Named configurations (`CONFIGS`):
'paper' (cardinality 8, bottleneck width 64, widen factor 4: the published model, 34.4 M parameters,
10.8 GFLOP/clip) and 'cpu' (same topology, cardinality 4, bottleneck width 4, widen factor 0.25, 16-channel
stem: 72 k parameters, 0.022 GFLOP/clip), trainable on a 2-core CPU in minutes.

`load_classifier` reads this project's checkpoints (`weights_only=True`) and the published classifier file (a
whole pickled `DataParallel(CifarResNeXt)`) through a restricted unpickler that turns every allowed class into
an inert placeholder and refuses any other global.
"""

import hashlib
import pickle
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from density.audio.signal import CLIP_SAMPLES, load_audio, mel_filterbank
from density.data.splits import SC09_CLASSES
from density.features.fairseq_checkpoint import (
    Placeholder,
    RestrictedUnpickler,
    UnsafeCheckpointError,
    restricted_pickle_module,
)

N_FFT, HOP, N_MELS = 2048, 512, 32  # 32 frames x 32 bands for a 1-s clip
AMIN, TOP_DB = 1e-10, 80.0  # librosa.power_to_db defaults
CONFIGS = {
    "paper": dict(cardinality=8, base_width=64, widen_factor=4, stem=64),
    "cpu": dict(cardinality=4, base_width=4, widen_factor=0.25, stem=16),
}
FORMAT = "asgan-classifier-v1"  # marks this project's checkpoints
PUBLISHED_MODULE = "models.resnext"  # where CifarResNeXt lived when the published file was pickled


class ClassifierError(ValueError):
    """A classifier file that is missing, unreadable or not a classifier."""


def fix_length(wav, n=CLIP_SAMPLES):
    """(..., T) -> (..., n): cut at the end or zero-pad at the end (the classifier's FixAudioLength)."""
    T = wav.shape[-1]
    return wav[..., :n] if T >= n else F.pad(wav, (0, n - T))


def classifier_input(wav):
    """(B, T) or (T,) float waveform at 16 kHz -> (B, 1, 32, 32) float32 log-power mel image (bands x frames),
    in dB relative to each clip's maximum, floored at -80 dB. A silent clip gives zeros."""
    x = fix_length(wav.reshape(-1, wav.shape[-1]).float())  # (B, 16000)
    window = torch.hann_window(N_FFT, periodic=True, device=x.device)
    spec = torch.stft(x, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec.real**2 + spec.imag**2  # (B, 1025, 32)
    mel = mel_filterbank(N_FFT, N_MELS).to(x.device).T @ power  # (B, 32, 32)
    db = 10 * torch.log10(mel.clamp_min(AMIN))
    ref = 10 * torch.log10(mel.amax((1, 2), keepdim=True).clamp_min(AMIN))
    db = db - ref
    return torch.maximum(db, db.amax((1, 2), keepdim=True) - TOP_DB)[:, None]


class ResNeXtBottleneck(nn.Module):
    """ResNeXt block type C: 1x1 reduce, grouped 3x3 (stride), 1x1 expand, plus a projection shortcut when the
    channel count changes."""

    def __init__(self, in_channels, out_channels, stride, cardinality, base_width, widen_factor):
        super().__init__()
        d = cardinality * int(base_width * out_channels / (widen_factor * 64.0))
        self.conv_reduce = nn.Conv2d(in_channels, d, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(d)
        self.conv_conv = nn.Conv2d(d, d, 3, stride, 1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(d)
        self.conv_expand = nn.Conv2d(d, out_channels, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if in_channels != out_channels:
            self.shortcut.add_module("shortcut_conv", nn.Conv2d(in_channels, out_channels, 1, stride, bias=False))
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out_channels))

    def forward(self, x):
        y = F.relu(self.bn_reduce(self.conv_reduce(x)))
        y = F.relu(self.bn(self.conv_conv(y)))
        y = self.bn_expand(self.conv_expand(y))
        return F.relu(self.shortcut(x) + y)


class ResNeXt(nn.Module):
    """ResNeXt-29 (3 stages of 3 bottlenecks) for (B, 1, 32, 32) images -> (logits (B, K), features (B, C)).

    Stage widths are stem, 64w, 128w, 256w (w = widen_factor); stages 2 and 3 halve the resolution.
    `classes` names the K outputs in order.
    """

    def __init__(self, classes=SC09_CLASSES, cardinality=8, base_width=64, widen_factor=4, stem=64, depth=29):
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError(f"ResNeXt depth must be 9k + 2, got {depth}")
        self.classes = tuple(classes)
        self.config = dict(
            cardinality=cardinality, base_width=base_width, widen_factor=widen_factor, stem=stem, depth=depth
        )
        widths = [stem] + [int(c * widen_factor) for c in (64, 128, 256)]
        self.conv_1_3x3 = nn.Conv2d(1, stem, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(stem)
        for s, stride in enumerate((1, 2, 2), start=1):
            stage = nn.Sequential()
            for b in range((depth - 2) // 9):
                c_in = widths[s - 1] if b == 0 else widths[s]
                stage.add_module(
                    f"stage_{s}_bottleneck_{b}",
                    ResNeXtBottleneck(c_in, widths[s], stride if b == 0 else 1, cardinality, base_width, widen_factor),
                )
            self.add_module(f"stage_{s}", stage)
        self.classifier = nn.Linear(widths[3], len(self.classes))
        self.n_features = widths[3]
        for name, p in self.named_parameters():  # the reference's initialisation
            if name.endswith("weight") and "conv" in name:
                nn.init.kaiming_normal_(p, mode="fan_out")
            elif name.endswith("weight") and "bn" in name:
                nn.init.ones_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.kaiming_normal_(self.classifier.weight)

    @classmethod
    def from_arch(cls, arch, classes=SC09_CLASSES):
        if arch not in CONFIGS:
            raise ValueError(f"unknown classifier arch '{arch}'; choose one of {sorted(CONFIGS)}")
        return cls(classes, **CONFIGS[arch])

    def forward(self, x):
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))  # (B, C, 8, 8) for 32x32 inputs
        features = x.mean((2, 3))
        return self.classifier(features), features

    @torch.inference_mode()
    def classify(self, wav):
        """(B, T) waveforms at 16 kHz -> (logits (B, K), features (B, C)), float32 on the model's device."""
        return self(classifier_input(wav.to(self.classifier.weight.device)))


def checkpoint_dict(model, **extra):
    """The weights_only-safe dict `load_classifier` reads: format, config, classes, state_dict, plus `extra`."""
    return dict(
        format=FORMAT,
        config=dict(model.config),
        classes=list(model.classes),
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    )


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class PublishedPlaceholder(Placeholder):
    """Inert stand-in for a module object of the published classifier pickle."""


class _PublishedUnpickler(RestrictedUnpickler):
    allowed = {
        k: v
        for k, v in RestrictedUnpickler.allowed.items()
        if k[0] in ("collections", "torch", "torch._utils", "builtins")
    }
    placeholder_base = PublishedPlaceholder
    kind = "the published SC09 classifier"
    _MODULES = {
        ("torch.nn.parallel.data_parallel", "DataParallel"),
        ("torch.nn.modules.conv", "Conv2d"),
        ("torch.nn.modules.batchnorm", "BatchNorm2d"),
        ("torch.nn.modules.linear", "Linear"),
        ("torch.nn.modules.container", "Sequential"),
        (PUBLISHED_MODULE, "CifarResNeXt"),
        (PUBLISHED_MODULE, "ResNeXtBottleneck"),
    }

    @classmethod
    def placeholder_for(cls, module, name):
        return (module, name) in cls._MODULES


def _flat_state(obj, prefix, out):
    """Parameters and persistent buffers of a placeholder module tree -> out[dotted name] = tensor."""
    state = getattr(obj, "state", None)
    if not isinstance(obj, PublishedPlaceholder) or not isinstance(state, dict):
        raise ClassifierError(f"expected a pickled torch module at '{prefix or 'the root'}', got {obj!r}")
    skip = state.get("_non_persistent_buffers_set", set())
    for group in ("_parameters", "_buffers"):
        for name, t in state.get(group, {}).items():
            if t is not None and name not in skip:
                out[prefix + name] = t.detach()
    for name, child in state.get("_modules", {}).items():
        if child is not None:
            _flat_state(child, f"{prefix}{name}.", out)
    return out


def _published_model(path):
    """The published pickled DataParallel(CifarResNeXt) -> ResNeXt with its weights (SC09 classes)."""
    with warnings.catch_warnings():  # the legacy format checks module sources; placeholders have none
        warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
        root = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle_module(_PublishedUnpickler)
        )
    if type(root).__name__ == "DataParallel":
        root = root.state.get("_modules", {}).get("module") if isinstance(root.state, dict) else None
    if type(root).__name__ != "CifarResNeXt" or not isinstance(root.state, dict):
        raise ClassifierError(f"{path}: holds {root!r}, not a (DataParallel-wrapped) CifarResNeXt")
    cfg = {k: root.state.get(k) for k in ("cardinality", "base_width", "widen_factor", "depth", "nlabels")}
    state = _flat_state(root, "", {})
    stem = state["conv_1_3x3.weight"].shape[0] if "conv_1_3x3.weight" in state else None
    if None in cfg.values() or stem is None or cfg["nlabels"] != len(SC09_CLASSES):
        raise ClassifierError(f"{path}: not the published 10-class SC09 CifarResNeXt ({cfg}, stem {stem})")
    model = ResNeXt(SC09_CLASSES, cfg["cardinality"], cfg["base_width"], cfg["widen_factor"], stem, cfg["depth"])
    return model, state


def load_classifier(path, device="cpu"):
    """A classifier file -> ResNeXt in eval mode on `device` (`.classes` names its outputs).

    Reads this project's checkpoints (train_classifier.py's classifier_best.pt or ckpt_*.pt, weights_only) and
    the published SaShiMi SC09 classifier `resnext.pth` (restricted unpickler; no code from the file runs).
    ClassifierError names the path for a missing, corrupt, unsafe or foreign file or a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise ClassifierError(
            f"classifier file {path} is a directory: give the file in it, e.g. {path / 'classifier_best.pt'} "
            "(what train_classifier.py writes) or the published resnext.pth"
        )
    if not path.is_file():
        raise ClassifierError(
            f"classifier file {path} does not exist: train one with train_classifier.py "
            "(see README, Evaluation) or download the published SC09 classifier resnext.pth"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # holds globals: maybe the published whole-model pickle
        ckpt = None
    except Exception as e:
        raise ClassifierError(f"{path}: not a readable classifier file (truncated or foreign?): {e}") from e
    if ckpt is None:
        try:
            model, state = _published_model(path)
        except UnsafeCheckpointError as e:
            raise ClassifierError(f"{path}: refused: {e}") from None
        except ClassifierError:
            raise
        except Exception as e:
            raise ClassifierError(
                f"{path}: neither a train_classifier.py checkpoint nor the published "
                f"classifier ({type(e).__name__}: {e})"
            ) from e
    elif isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        model, state = ResNeXt(ckpt["classes"], **ckpt["config"]), ckpt["state_dict"]
    else:
        raise ClassifierError(
            f"{path}: not a classifier checkpoint (no format '{FORMAT}'); use a file written "
            "by train_classifier.py or the published resnext.pth"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ClassifierError(f"{path}: weights do not fit the classifier they describe: {e}") from e
    return model.to(device).eval()


class ClipDataset(torch.utils.data.Dataset):
    """Audio files -> (wav (16000,) float32 cut/end-padded like `fix_length`, label index or -1).

    `labels` (optional) are names looked up in `classes`; an unknown label is a ClassifierError naming it.
    """

    def __init__(self, paths, labels=None, classes=SC09_CLASSES, resample=False):
        self.paths, self.resample = list(paths), resample
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(labels or ()) - set(index))
        if unknown:
            raise ClassifierError(f"labels {unknown} are not among the classifier's classes {list(classes)}")
        self.targets = [index[label] for label in labels] if labels is not None else [-1] * len(self.paths)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return fix_length(load_audio(self.paths[i], resample=self.resample)), self.targets[i]
