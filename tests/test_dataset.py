import csv
import glob
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal
from torch.utils.data import DataLoader

from density.audio.signal import REFERENCE_MEL_PAD, AudioError, load_audio, log_mel, save_wav
from density.config import parse_config
from density.data import splits as split_data
from density.data.digits import make_digits_corpus
from density.dataset import (
    Collate,
    DatasetError,
    DiagonalNormal,
    FeatureDataset,
    build_datasets,
    discover_files,
    feature_path,
)


def _cfg(**kw):
    base = dict(
        train_root="",
        n_valid=1,
        data_type="hubert_L6",
        use_sc09_splits=False,
        sc09_train_csv="",
        sc09_valid_csv="",
        z_dim=4,
        z_mean=0.0,
        z_std=1.0,
        c_dim=3,
        preload=False,
        seed=1775,
        rp_w_cfg=SimpleNamespace(seq_len=8),
    )
    base.update(kw)
    return SimpleNamespace(**base)


def _item(frames, c=3, start=0):
    """(frames, c) features whose frame i holds start + i in every channel, and a (frames, 4) z."""
    x = (start + torch.arange(frames, dtype=torch.float32))[:, None].repeat(1, c)
    return x, torch.randn(frames, 4)


def _save_feats(root, rel, frames, c=3):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.randn(frames, c), path)
    return path


# ---------------------------------------------------------------- collate


def test_collate_tile_and_pad_rules():
    col = Collate(seq_len=8, data_type="hubert_L6", c_dim=3)
    batch = [_item(5, start=10), _item(4, start=20), _item(3, start=30), _item(8, start=40)]
    feats, lengths, none, z = col(batch)
    assert feats.shape == (4, 8, 3) and feats.dtype == torch.float32 and none is None
    assert lengths.dtype == torch.int64 and lengths.tolist() == [5, 4, 3, 8]
    # 5 > 8/2: copied, then frames 0..2 tiled once into positions 5..7
    assert feats[0, :, 0].tolist() == [10, 11, 12, 13, 14, 10, 11, 12]
    # 4 = 8/2 and 3 < 8/2: no tiling, tail is the (zero) silence vector
    assert feats[1, :, 0].tolist() == [20, 21, 22, 23, 0, 0, 0, 0]
    assert feats[2, :, 0].tolist() == [30, 31, 32, 0, 0, 0, 0, 0]
    assert feats[3, :, 0].tolist() == list(range(40, 48))
    assert torch.equal(z, torch.stack([b[1][0] for b in batch]))  # row 0 of each item's z


def test_collate_crop_start_range():
    col = Collate(seq_len=8, data_type="hubert_L6", c_dim=3)
    random.seed(0)
    starts = set()
    for _ in range(200):
        feats, lengths, _, _ = col([_item(10), _item(9)])
        starts.add(int(feats[0, 0, 0]))
        assert feats[0, :, 0].tolist() == list(range(int(feats[0, 0, 0]), int(feats[0, 0, 0]) + 8))
        assert feats[1, :, 0].tolist() == list(range(8))  # l = seq_len + 1: start is always 0
        assert lengths.tolist() == [8, 8]
    assert starts == {0, 1}  # U{0 .. l - seq_len - 1}: l - seq_len = 2 is never drawn (reference note 24)
    random.seed(5)
    a = col([_item(30)])[0]
    random.seed(5)
    assert torch.equal(a, col([_item(30)])[0])  # the crop follows python's random


def test_collate_silence_vectors(tmp_path):
    feats = Collate(8, "melspec", c_dim=3)([_item(2)])[0]
    assert torch.all(feats[0, 2:] == REFERENCE_MEL_PAD)
    sil = torch.tensor([1.0, 2.0, 3.0])
    torch.save(sil, tmp_path / "sil.pt")
    col = Collate.from_config(_cfg(), sil_vec_path=str(tmp_path / "sil.pt"))
    assert torch.equal(col([_item(2)])[0][0, 5], sil)
    col = Collate.from_config(_cfg(sil_vec_path=str(tmp_path / "sil.pt")))
    assert torch.equal(col([_item(2)])[0][0, 7], sil)
    torch.save(torch.zeros(5), tmp_path / "bad.pt")
    with pytest.raises(DatasetError, match="bad.pt.*5 values.*c_dim=3"):
        Collate.from_config(_cfg(), sil_vec_path=str(tmp_path / "bad.pt"))


def test_collate_wav():
    col = Collate(seq_len=6, data_type="wav")
    items = [(torch.arange(4.0) + 1, torch.randn(4)), (torch.arange(2.0) + 1, torch.randn(4))]
    feats, lengths, _, z = col(items)
    assert feats.shape == (2, 6, 1) and lengths.tolist() == [4, 2]
    assert feats[0, :, 0].tolist() == [1, 2, 3, 4, 1, 2] and feats[1, :, 0].tolist() == [1, 2, 0, 0, 0, 0]
    assert torch.equal(z, torch.stack([items[0][1], items[1][1]]))


# ---------------------------------------------------------------- items and z


def test_z_is_mvn_from_the_global_rng_with_z_std_as_variance(tmp_path):
    path = _save_feats(tmp_path, "a.pt", frames=4000)
    ds = FeatureDataset([path], z_dim=4, z_mean=1.0, z_std=4.0, c_dim=3)
    torch.manual_seed(0)
    x, z = ds[0]
    assert x.shape == (4000, 3) and z.shape == (4000, 4)
    assert z.mean().item() == pytest.approx(1.0, abs=0.1)
    assert z.std().item() == pytest.approx(2.0, abs=0.1)  # variance 4
    torch.manual_seed(0)
    ref = MultivariateNormal(torch.ones(4), 4.0 * torch.eye(4)).sample((4000,))
    assert torch.equal(z, ref)
    torch.manual_seed(0)
    assert torch.equal(ds[0][1], z)
    one = FeatureDataset([_save_feats(tmp_path, "one.pt", frames=1)], z_dim=4, c_dim=3)
    assert one[0][1].shape == (1, 4) and Collate(8, c_dim=3)([one[0]])[3].shape == (1, 4)
    with pytest.raises(DatasetError, match="z_std"):
        FeatureDataset([path], z_dim=4, z_std=0.0)


@pytest.mark.parametrize("z_dim, mean, var", [(256, 0.0, 1.0), (512, 0.3, 0.5), (7, -1.0, 3.0)])
def test_diagonal_normal_draws_what_multivariate_normal_draws(z_dim, mean, var):
    fast = DiagonalNormal(torch.full((z_dim,), mean), var * torch.eye(z_dim))
    slow = MultivariateNormal(torch.full((z_dim,), mean), var * torch.eye(z_dim))
    for shape in ((), (100,), (3, 5)):
        torch.manual_seed(1)
        want, after = slow.sample(shape), torch.rand(3)
        torch.manual_seed(1)
        assert torch.equal(fast.sample(shape), want) and torch.equal(torch.rand(3), after)  # same stream position
    with pytest.raises(ValueError, match="diagonal"):
        DiagonalNormal(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.5, 1.0]]))


def test_bad_feature_files_are_named(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(DatasetError, match="corrupt.pt"):
        FeatureDataset([bad], z_dim=4, c_dim=3)[0]
    code = tmp_path / "code.pt"
    torch.save({"x": SimpleNamespace(a=1)}, code)  # needs arbitrary unpickling: refused
    with pytest.raises(DatasetError, match="code.pt"):
        FeatureDataset([code], z_dim=4, c_dim=3)[0]
    wide = _save_feats(tmp_path, "wide.pt", frames=5, c=7)
    with pytest.raises(DatasetError, match="wide.pt.*7 channels.*c_dim=3"):
        FeatureDataset([wide], z_dim=4, c_dim=3)[0]


def test_audio_items(tmp_path):
    t = torch.arange(16000) / 16000
    wav = 0.3 * torch.sin(2 * torch.pi * 440 * t) - 0.2
    save_wav(tmp_path / "a.wav", wav)
    mel = FeatureDataset([tmp_path / "a.wav"], "melspec", z_dim=4, c_dim=128)
    x, z = mel[0]
    assert x.shape == (100, 128) and z.shape == (100, 4)
    assert torch.equal(x, log_mel(load_audio(tmp_path / "a.wav")).T)
    w, zw = FeatureDataset([tmp_path / "a.wav"], "wav", z_dim=4)[0]
    assert w.shape == (16000,) and zw.shape == (4,)
    assert w.abs().max().item() == pytest.approx(0.99, abs=1e-6)  # peak of |x|, here the negative one
    save_wav(tmp_path / "b.wav", wav[:8000], sr=8000)
    with pytest.raises(AudioError, match="b.wav.*8000"):
        FeatureDataset([tmp_path / "b.wav"], "melspec", z_dim=4, c_dim=128)[0]
    with pytest.raises(DatasetError, match="needs .pt feature files"):
        FeatureDataset([tmp_path / "a.wav"], "hubert_L6", z_dim=4)[0]


def test_preload_is_fp16_and_compact(tmp_path):
    big = torch.randn(10, 6, 3)
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"{i}.pt")
        torch.save(big[i], paths[-1])  # a view: torch.save stores the whole (10, 6, 3) storage
    ds = FeatureDataset(paths, z_dim=4, c_dim=3, preload=True)
    for i, cached in enumerate(ds.cache):
        assert cached.dtype == torch.float16 and cached.untyped_storage().nbytes() == 6 * 3 * 2
        x, z = ds[i]
        assert x.dtype == torch.float32 and torch.equal(x, big[i].half().float()) and z.shape == (6, 4)


# ---------------------------------------------------------------- discovery and CSV mode


def test_discovery_split_is_seeded(tmp_path):
    for i in range(6):
        _save_feats(tmp_path, f"w{i % 2}/{i}.pt", frames=5)
    save_wav(tmp_path / "ignored.wav", torch.zeros(1000))  # .pt files win over audio
    train, valid = build_datasets(_cfg(train_root=str(tmp_path), n_valid=2, seed=7))
    files = sorted(glob.glob(os.path.join(str(tmp_path), "**", "*.pt"), recursive=True))
    random.Random(7).shuffle(files)
    assert train.files == files[:4] and valid.files == files[4:]
    assert build_datasets(_cfg(train_root=str(tmp_path), n_valid=2, seed=7))[1].files == valid.files
    assert build_datasets(_cfg(train_root=str(tmp_path), n_valid=0))[1].files == []
    with pytest.raises(DatasetError, match="n_valid=6"):
        build_datasets(_cfg(train_root=str(tmp_path), n_valid=6))
    with pytest.raises(DatasetError, match="not a directory"):
        build_datasets(_cfg(train_root=str(tmp_path / "nope")))


def test_discovery_falls_back_to_audio(tmp_path):
    for name in ("c.flac", "a.flac", "b.wav"):
        save_wav(tmp_path / name, torch.zeros(1000))
    train, valid = build_datasets(_cfg(train_root=str(tmp_path), n_valid=0, data_type="melspec", c_dim=128))
    found = [str(tmp_path / n) for n in ("a.flac", "b.wav", "c.flac")]  # every extension together, sorted
    assert discover_files(tmp_path) == found and sorted(train.files) == found
    with pytest.raises(DatasetError, match=r"\.(wav|flac): data_type hubert_L6 needs .pt feature files"):
        build_datasets(_cfg(train_root=str(tmp_path), n_valid=0))  # at build time, not at the first batch
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no .pt feature files"):
        build_datasets(_cfg(train_root=str(empty)))


def test_with_train_config(tmp_path):
    for i in range(3):
        _save_feats(tmp_path, f"zero/{i}.pt", frames=50, c=768)
    cfg = parse_config([f"train_root={tmp_path}", "n_valid=1"])
    train, valid = build_datasets(cfg)
    loader = DataLoader(train, batch_size=2, collate_fn=Collate.from_config(cfg))
    feats, lengths, _, z = next(iter(loader))
    assert feats.shape == (2, 48, 768) and lengths.tolist() == [48, 48] and z.shape == (2, 512)
    with pytest.raises(DatasetError, match="n_valid"):
        build_datasets(parse_config([f"train_root={tmp_path}"]))


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([r, r.split("/")[-2]] for r in rows)


def test_csv_mapping_to_feature_cache(tmp_path):
    audio = [str(tmp_path / "sc" / "zero" / "a_nohash_0.wav"), str(tmp_path / "sc" / "one" / "b_nohash_1.wav")]
    cache = tmp_path / "feats"
    for p in audio:
        assert feature_path(p, cache) == cache / p.split("/")[-2] / (p.split("/")[-1][:-4] + ".pt")
        _save_feats(cache, feature_path(p, cache).relative_to(cache), frames=5)
    _write_csv(tmp_path / "train.csv", audio)
    _write_csv(tmp_path / "valid.csv", audio[:1])
    cfg = _cfg(
        train_root=str(cache),
        use_sc09_splits=True,
        sc09_train_csv=str(tmp_path / "train.csv"),
        sc09_valid_csv=str(tmp_path / "valid.csv"),
        n_valid=None,
    )
    train, valid = build_datasets(cfg)
    assert train.files == [str(cache / "zero/a_nohash_0.pt"), str(cache / "one/b_nohash_1.pt")]
    assert valid.files == [str(cache / "zero/a_nohash_0.pt")] and train[1][0].shape == (5, 3)
    (cache / "one/b_nohash_1.pt").unlink()
    with pytest.raises(DatasetError) as e:
        build_datasets(cfg)
    msg = str(e.value)
    assert audio[1] in msg and str(cache / "one/b_nohash_1.pt") in msg and "hubert_feature_reader.py" in msg
    with pytest.raises(DatasetError, match="sc09_valid_csv"):
        build_datasets(_cfg(use_sc09_splits=True, sc09_train_csv=str(tmp_path / "valid.csv"), train_root=str(cache)))
    (tmp_path / "nopath.csv").write_text("file,label\nx,y\n")
    with pytest.raises(DatasetError, match="'path' column"):
        build_datasets(_cfg(use_sc09_splits=True, sc09_train_csv=str(tmp_path / "nopath.csv")))


def test_generated_corpus_end_to_end_melspec(tmp_path, monkeypatch):
    root = tmp_path / "digits"
    make_digits_corpus(root, seed=2, n_speakers=4, per_word=1, valid_frac=0.25, test_frac=0.25, progress=False)
    monkeypatch.chdir(tmp_path)
    split_data.main(["--root_path", str(root), "--sc09_only", "true"])
    cfg = _cfg(
        data_type="melspec",
        c_dim=128,
        use_sc09_splits=True,
        sc09_train_csv="splits/sc09-train.csv",
        sc09_valid_csv="splits/sc09-valid.csv",
        preload=True,
        rp_w_cfg=SimpleNamespace(seq_len=96),
    )
    train, valid = build_datasets(cfg)
    assert len(train) == 20 and len(valid) == 10 and train.files[0].endswith(".wav")
    random.seed(0)
    torch.manual_seed(0)
    feats, lengths, _, z = Collate.from_config(cfg)([train[i] for i in range(4)])
    assert feats.shape == (4, 96, 128) and lengths.tolist() == [96] * 4 and z.shape == (4, 4)
    assert torch.isfinite(feats).all() and feats.max() > 0 > feats.min() >= np.log(1e-5) - 0.01
    # speech sits in the middle of the clip: more energy there than at the edges
    assert feats[:, 40:60].mean() > feats[:, :10].mean() + 2


def test_a_split_csv_that_is_not_utf8_names_the_key_the_file_and_the_fix(tmp_path):
    """It used to end in a bare UnicodeDecodeError naming no file."""
    bad = tmp_path / "train.csv"
    bad.write_bytes("path,label\nsc/z\xe9ro/a.wav,zero\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=rf"sc09_train_csv={bad}: line 2 is not UTF-8 text .*save the CSV as UTF-8"):
        build_datasets(_cfg(use_sc09_splits=True, sc09_train_csv=str(bad)))
