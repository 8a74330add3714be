"""HuBERT reader: safe fairseq loading without fairseq, parity with fairseq's recorded outputs, padding rules."""

import builtins
import importlib.util
import os
import pickle
import sys

import pytest
import torch
import torch.nn.functional as F

from density.audio.signal import load_audio, save_wav
from density.features.fairseq_checkpoint import (
    FairseqPlaceholder,
    UnsafeCheckpointError,
    hubert_config,
    hubert_state_dict,
    load_fairseq_checkpoint,
)
from density.features.hubert import HubertFeatureReader


@pytest.fixture(scope="module")
def ckpt_path(fixtures_dir):
    return fixtures_dir / "hubert_fairseq" / "tiny_hubert_fairseq.pt"


@pytest.fixture(scope="module")
def expected(fixtures_dir):
    return torch.load(fixtures_dir / "hubert_fairseq" / "tiny_hubert_expected.pt", weights_only=True)


@pytest.fixture(scope="module")
def reader6(ckpt_path):
    return HubertFeatureReader(ckpt_path, layer=6)


def test_fairseq_is_not_needed(ckpt_path, monkeypatch):
    assert importlib.util.find_spec("fairseq") is None, "fairseq is installed; this test expects it absent"
    monkeypatch.setitem(sys.modules, "fairseq", None)  # any `import fairseq` now fails
    with pytest.raises(ImportError):
        import fairseq  # noqa: F401
    ckpt = load_fairseq_checkpoint(ckpt_path)
    assert set(ckpt) >= {"cfg", "model", "task_state"}
    dictionary = ckpt["task_state"]["dictionaries"][0]
    assert isinstance(dictionary, FairseqPlaceholder)
    assert type(dictionary).__module__ == "fairseq.data.dictionary" and type(dictionary).__name__ == "Dictionary"
    # the safe default loader refuses the file: hence the restricted unpickler
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt_path, weights_only=True)


def test_config_and_weight_mapping(ckpt_path, expected):
    from transformers import HubertModel

    ckpt = load_fairseq_checkpoint(ckpt_path)
    cfg = hubert_config(ckpt)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (48, 7, 4, 96)
    assert cfg.conv_dim == [32] * 7 and cfg.conv_kernel == [10, 3, 3, 3, 3, 2, 2] and cfg.conv_stride == [5] + [2] * 6
    assert cfg.feat_extract_norm == "group" and not cfg.do_stable_layer_norm and not cfg.conv_bias
    assert (cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups) == (16, 4)
    model = HubertModel(cfg)
    model.load_state_dict(hubert_state_dict(ckpt, cfg), strict=True)
    dropped = ckpt["model"]["label_embs_concat"].numel() + sum(
        v.numel() for k, v in ckpt["model"].items() if k.startswith("final_proj.")
    )
    assert sum(p.numel() for p in model.parameters()) == expected["model_num_params"] - dropped
    with torch.no_grad():  # transformers' hidden_states[L] is the output of block L, like fairseq's output_layer=L
        hidden = model.eval()(expected["wav"], output_hidden_states=True).hidden_states
    torch.testing.assert_close(hidden[6], expected["layer6"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("layer", [1, 6, 7])
def test_parity_with_fairseq(ckpt_path, expected, layer):
    reader = HubertFeatureReader(ckpt_path, layer=layer)
    assert not reader.normalize and expected["task_normalize"] is False
    torch.testing.assert_close(reader.extract(expected["wav"]), expected[f"layer{layer}"], rtol=0, atol=1e-4)
    torch.testing.assert_close(reader.extract(expected["wav_odd"]), expected[f"odd_layer{layer}"], rtol=0, atol=1e-4)


def test_parity_layernormed_input(ckpt_path, expected):
    reader = HubertFeatureReader(ckpt_path, layer=6, normalize=True)
    got = reader.extract(expected["wav"][:1])
    torch.testing.assert_close(got, expected["layer6_of_layernormed_wav0"], rtol=0, atol=1e-4)


def test_get_feats_padding(reader6, expected, tmp_path):
    wav = expected["wav"]  # (3, 16000): T is a multiple of 320, so get_feats appends a full 320 zeros
    one = reader6.get_feats(audio=wav[0])
    assert one.shape == (50, 48) and reader6.num_frames(16000) == 50
    torch.testing.assert_close(one, reader6.extract(F.pad(wav[:1], (0, 320)))[0], rtol=0, atol=1e-6)
    odd = expected["wav_odd"][0]  # 12345 samples -> 135 zeros to 12480
    torch.testing.assert_close(
        reader6.get_feats(audio=odd), reader6.extract(F.pad(odd[None], (0, 135)))[0], rtol=0, atol=1e-6
    )
    save_wav(tmp_path / "a.wav", wav[1] / wav[1].abs().max())
    from_file = reader6.get_feats(tmp_path / "a.wav", ref_len=16000)
    torch.testing.assert_close(from_file, reader6.get_feats(audio=load_audio(tmp_path / "a.wav")), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        reader6.get_feats()


def test_batched_pads_from_time_axis(ckpt_path, expected):
    reader = HubertFeatureReader(ckpt_path, layer=6, normalize=True)
    wav = expected["wav"]  # B = 3: the reference would have padded 320 - 3 samples
    batched = reader.get_feats_batched(wav)
    assert batched.shape == (3, 50, 48)
    for i in range(3):  # per-clip padding and per-clip layer norm: each row is the single-clip result
        torch.testing.assert_close(batched[i], reader.get_feats(audio=wav[i]), rtol=0, atol=1e-5)


def test_transformers_folder_and_pre_ln_last_layer(tmp_path):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[16] * 7,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
    )
    model = HubertModel(cfg).eval()
    model.save_pretrained(tmp_path / "hf")
    wav = torch.randn(2, 8000)
    outputs = {}
    model.encoder.layers[2].register_forward_hook(
        lambda m, i, o: outputs.update(block3=o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        hidden = model(F.pad(wav, (0, 320)), output_hidden_states=True).hidden_states
    got = HubertFeatureReader(tmp_path / "hf", layer=2).get_feats_batched(wav)
    assert got.shape == (2, 25, 32)
    torch.testing.assert_close(got, hidden[2], rtol=0, atol=1e-5)
    # pre-LN model, last block: fairseq returns the block output without the encoder's final layer norm
    torch.testing.assert_close(
        HubertFeatureReader(tmp_path / "hf", layer=3).get_feats_batched(wav), outputs["block3"], rtol=0, atol=1e-5
    )
    with pytest.raises(ValueError, match="1..3"):
        HubertFeatureReader(tmp_path / "hf", layer=4)


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval])
@pytest.mark.parametrize("zip_format", [True, False])
def test_refuses_code_execution(tmp_path, payload, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(
        {"cfg": {}, "model": {"w": torch.zeros(2)}, "x": payload(marker)},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*'(posix\.system|builtins\.eval)'"):
        load_fairseq_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        HubertFeatureReader(path)
    assert not marker.exists()


# Hand-written protocol-2 pickles whose BUILD opcode sets attributes on an allowed class / function (pickle's
# `setattr` path): loading must refuse them before argparse.Namespace or torch's tensor rebuilder is altered.
_SET_CLASS_ATTR = b"\x80\x02cargparse\nNamespace\nN}X\x05\x00\x00\x00pwned\x88s\x86b."
_SET_FUNC_DEFAULTS = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__K\x07\x85s\x86b."


@pytest.mark.parametrize("payload", [_SET_CLASS_ATTR, _SET_FUNC_DEFAULTS])
def test_refuses_state_on_classes_and_functions(tmp_path, payload):
    import argparse

    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    path = tmp_path / "evil.pt"
    path.write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt: checkpoint sets the state of"):
        load_fairseq_checkpoint(path)
    assert not hasattr(argparse.Namespace, "pwned")
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults


def test_truncated_or_foreign_checkpoint_names_the_file(ckpt_path, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt_path.read_bytes()[:50000])
    with pytest.raises(ValueError, match=r"cut\.pt: cannot read this checkpoint"):
        HubertFeatureReader(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt: not a fairseq checkpoint"):
        load_fairseq_checkpoint(foreign)


def test_unsupported_fairseq_model_names_the_file(ckpt_path, tmp_path):
    ckpt = load_fairseq_checkpoint(ckpt_path)
    model = dict(ckpt["model"], **{"w2v_encoder.proj.weight": torch.zeros(2, 48)})  # e.g. a fine-tuned CTC model
    torch.save({"cfg": ckpt["cfg"], "model": model}, tmp_path / "ctc.pt")
    with pytest.raises(ValueError, match=r"ctc\.pt: not a supported fairseq HuBERT.*w2v_encoder\.proj\.weight"):
        HubertFeatureReader(tmp_path / "ctc.pt")


@pytest.mark.parametrize("n", [319, 320, 399, 400, 719, 720, 12345, 16000])
def test_num_frames_is_what_get_feats_returns(reader6, n):
    expected = reader6.num_frames(n)
    assert expected == (0 if n < 320 else (n + 320 - n % 320 - 400) // 320 + 1)
    if expected:
        assert reader6.get_feats(audio=torch.randn(n)).shape == (expected, 48)
    else:
        with pytest.raises(ValueError, match="receptive field"):
            reader6.get_feats(audio=torch.randn(n))
