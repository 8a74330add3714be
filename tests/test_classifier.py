"""The evaluation classifier: librosa-equal front end, ResNeXt configs, own and published file formats."""

import os
import pickle
import sys

import pytest
import torch
import torch.nn as nn
from helpers import CifarResNeXt, published_like

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


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # the restated classes have no file
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_published_format_loads(tmp_path, original_resnext_module, monkeypatch, legacy):
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


def test_malicious_pickles_are_refused(tmp_path, original_resnext_module):
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
