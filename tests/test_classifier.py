"""The evaluation classifier: librosa-equal front end, ResNeXt configs, own and published file formats."""

import os
import pickle
import sys
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from density.audio.signal import mel_filterbank
from density.evaluation.classifier import (
    CONFIGS,
    SC09_CLASSES,
    ClassifierError,
    ResNeXt,
    checkpoint_dict,
    classifier_input,
    load_classifier,
)

torch.set_num_threads(1)


def test_front_end_matches_librosa_fixture(fixtures_dir):
    ref = torch.load(fixtures_dir / "classifier" / "frontend_librosa.pt", weights_only=True)
    assert torch.allclose(mel_filterbank(2048, 32).T, ref["mel_fbanks"], rtol=1e-5, atol=1e-8)
    out = classifier_input(ref["wav"])
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], ref["mel_db"], atol=1e-3, rtol=0)  # dB
    for key in ("short", "long"):  # end-padded / end-cut to 16000 samples first
        torch.testing.assert_close(classifier_input(ref[f"wav_{key}"])[0, 0], ref[f"mel_db_{key}"], atol=1e-3, rtol=0)
    assert out.amax((2, 3)).eq(0).all() and out.amin() >= -80
    assert classifier_input(torch.zeros(3, 16000)).eq(0).all()  # silence: 0 dB everywhere, no NaN


def test_configs_and_outputs():
    paper = ResNeXt.from_arch("paper")
    assert abs(sum(p.numel() for p in paper.parameters()) - 34.4e6) < 0.1e6  # ResNeXt-29 8x64d, 1 input channel
    torch.manual_seed(0)
    m = ResNeXt.from_arch("cpu").eval()
    assert m.config == dict(CONFIGS["cpu"], depth=29) and m.classes == SC09_CLASSES
    logits, feats = m(torch.randn(3, 1, 32, 32))
    assert logits.shape == (3, 10) and feats.shape == (3, m.n_features)
    torch.testing.assert_close(m.classifier(feats), logits)  # features = input of the final linear layer
    with pytest.raises(ValueError, match="unknown classifier arch"):
        ResNeXt.from_arch("big")


def test_own_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    m = ResNeXt(("a", "b", "c"), cardinality=2, base_width=4, widen_factor=0.25, stem=8).eval()
    torch.save(checkpoint_dict(m, steps=3), tmp_path / "c.pt")
    loaded = load_classifier(tmp_path / "c.pt")
    assert loaded.classes == ("a", "b", "c") and not loaded.training
    wav = torch.randn(2, 16000)
    for a, b in zip(m.classify(wav), loaded.classify(wav)):
        torch.testing.assert_close(a, b)


def test_classifier_file_errors(tmp_path):
    with pytest.raises(ClassifierError, match=r"nothing\.pt does not exist.*train_classifier\.py"):
        load_classifier(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(os.urandom(3000))
    with pytest.raises(ClassifierError, match=r"junk\.pt"):
        load_classifier(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ClassifierError, match=r"other\.pt: not a classifier checkpoint"):
        load_classifier(tmp_path / "other.pt")


# ---------------------------------------------------------------- the published whole-model pickle
# Offline there is no published file: these tests build one with the same structure (the original training code's
# classes, pickled from a module named `models.resnext`, wrapped in DataParallel, saved whole with torch.save).


class ResNeXtBottleneck(nn.Module):
    """The original training code's block (pytorch-speech-commands models/resnext.py), restated."""

    def __init__(self, in_channels, out_channels, stride, cardinality, base_width, widen_factor):
        super().__init__()
        D = cardinality * int(base_width * out_channels / (widen_factor * 64.0))
        self.conv_reduce = nn.Conv2d(in_channels, D, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn_reduce = nn.BatchNorm2d(D)
        self.conv_conv = nn.Conv2d(D, D, kernel_size=3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(D)
        self.conv_expand = nn.Conv2d(D, out_channels, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if in_channels != out_channels:
            self.shortcut.add_module(
                "shortcut_conv",
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, padding=0, bias=False),
            )
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out_channels))

    def forward(self, x):
        b = F.relu(self.bn_reduce(self.conv_reduce(x)), inplace=True)
        b = F.relu(self.bn(self.conv_conv(b)), inplace=True)
        b = self.bn_expand(self.conv_expand(b))
        return F.relu(self.shortcut(x) + b, inplace=True)


class CifarResNeXt(nn.Module):
    """The original classifier (64-channel stem, stages 64w/128w/256w, 8x8 average pool), restated."""

    def __init__(self, nlabels, cardinality=8, depth=29, base_width=64, widen_factor=4, in_channels=3):
        super().__init__()
        self.cardinality, self.depth, self.block_depth = cardinality, depth, (depth - 2) // 9
        self.base_width, self.widen_factor, self.nlabels, self.output_size = base_width, widen_factor, nlabels, 64
        self.stages = [64, 64 * widen_factor, 128 * widen_factor, 256 * widen_factor]
        self.conv_1_3x3 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        self.stage_1 = self.block("stage_1", self.stages[0], self.stages[1], 1)
        self.stage_2 = self.block("stage_2", self.stages[1], self.stages[2], 2)
        self.stage_3 = self.block("stage_3", self.stages[2], self.stages[3], 2)
        self.classifier = nn.Linear(self.stages[3], nlabels)

    def block(self, name, in_channels, out_channels, pool_stride=2):
        block = nn.Sequential()
        for i in range(self.block_depth):
            block.add_module(
                f"{name}_bottleneck_{i}",
                ResNeXtBottleneck(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    pool_stride if i == 0 else 1,
                    self.cardinality,
                    self.base_width,
                    self.widen_factor,
                ),
            )
        return block

    def forward(self, x):
        x = F.relu(self.bn_1(self.conv_1_3x3(x)), inplace=True)
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        x = F.avg_pool2d(x, 8, 1).view(-1, self.stages[3])
        return self.classifier(x)


@pytest.fixture
def original_module(monkeypatch):
    """The original classes importable as models.resnext while a file is pickled."""
    pkg, mod = types.ModuleType("models"), types.ModuleType("models.resnext")
    for cls in (CifarResNeXt, ResNeXtBottleneck):
        monkeypatch.setattr(cls, "__module__", "models.resnext")
        setattr(mod, cls.__name__, cls)
    pkg.resnext = mod
    monkeypatch.setitem(sys.modules, "models", pkg)
    monkeypatch.setitem(sys.modules, "models.resnext", mod)
    return mod


def published_like(path, legacy):
    """Save DataParallel(CifarResNeXt) whole (small widths, random BN statistics) -> the model in eval mode."""
    torch.manual_seed(0)
    model = CifarResNeXt(nlabels=10, cardinality=2, base_width=4, widen_factor=1, in_channels=1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 1.5)
    wrapped = nn.DataParallel(model)
    torch.save(wrapped, path, _use_new_zipfile_serialization=not legacy)
    return model.eval()


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # the restated classes have no file
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_published_format_loads(tmp_path, original_module, monkeypatch, legacy):
    path = tmp_path / "resnext.pth"
    original = published_like(path, legacy)
    with pytest.raises(pickle.UnpicklingError):  # a whole pickled model: weights_only refuses it
        torch.load(path, weights_only=True)
    monkeypatch.delitem(sys.modules, "models.resnext")  # loading must not need (or import) the original code
    monkeypatch.delitem(sys.modules, "models")
    loaded = load_classifier(path)
    assert loaded.classes == SC09_CLASSES and loaded.config["cardinality"] == 2 and loaded.config["stem"] == 64
    x = classifier_input(torch.randn(4, 16000))
    with torch.no_grad():
        logits, feats = loaded(x)
        torch.testing.assert_close(logits, original(x), atol=1e-5, rtol=1e-5)


class _Evil:
    def __reduce__(self):
        return os.system, ("echo pwned > /dev/null",)


def test_malicious_pickles_are_refused(tmp_path, original_module):
    path = tmp_path / "evil.pth"
    model = nn.DataParallel(CifarResNeXt(nlabels=10, cardinality=2, base_width=4, widen_factor=1, in_channels=1))
    model.payload = _Evil()  # a whole-model pickle that runs a command when unpickled
    torch.save(model, path)
    with pytest.raises(ClassifierError, match=r"evil\.pth: refused.*'(posix|os)\.system'"):
        load_classifier(path)
    torch.save({"model": nn.ReLU()}, tmp_path / "relu.pth")  # a torch.nn class the published file does not use
    with pytest.raises(ClassifierError, match=r"relu\.pth: refused.*torch\.nn\.modules\.activation\.ReLU"):
        load_classifier(tmp_path / "relu.pth")


def test_a_directory_is_named_as_one(tmp_path):
    """It used to be reported as 'does not exist'."""
    with pytest.raises(ClassifierError, match=rf"classifier file {tmp_path} is a directory: .*classifier_best\.pt"):
        load_classifier(tmp_path)
