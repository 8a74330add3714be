import csv
import re

import numpy as np
import pytest
import soundfile as sf

from density.data import digits
from density.data.digits import make_digits_corpus, plan_corpus, render
from density.data.splits import SC09_CLASSES

NAME = re.compile(r"^[0-9a-f]{8}_nohash_\d+\.wav$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    n = make_digits_corpus(out, seed=3, n_speakers=8, per_word=2, progress=False)
    return out, n


def _speaker(rel):
    return rel.split("/")[1].split("_nohash_")[0]


def test_layout_and_audio(corpus):
    out, n = corpus
    wavs = sorted(out.glob("*/*.wav"))
    assert n == len(wavs) == 8 * 2 * len(SC09_CLASSES)
    assert sorted({p.parent.name for p in wavs}) == sorted(SC09_CLASSES)
    for p in wavs:
        assert NAME.match(p.name), p.name
    per_word = {w: sorted(p.name for p in (out / w).glob("*.wav")) for w in SC09_CLASSES}
    assert all(names == per_word["zero"] for names in per_word.values())  # every speaker says every word
    for p in wavs[::7]:
        info = sf.info(str(p))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
        x, _ = sf.read(str(p))
        loud = np.nonzero(np.abs(x) > 0.02 * np.abs(x).max())[0]
        assert 0.2 < np.abs(x).max() <= 0.91
        assert loud[0] > 0 and loud[-1] < 15999  # the word sits inside the second, with silence around it
        assert abs(loud[0] - (15999 - loud[-1])) <= 2  # centred
        assert 0.1 * 16000 < loud[-1] - loud[0] <= digits.MAX_SPEECH


def test_splits_are_speaker_and_variant_disjoint(corpus):
    out, _ = corpus
    valid = (out / "validation_list.txt").read_text().split()
    test = (out / "testing_list.txt").read_text().split()
    every = {p.relative_to(out).as_posix() for p in out.glob("*/*.wav")}
    assert valid and test and set(valid) <= every and set(test) <= every and not set(valid) & set(test)
    train = every - set(valid) - set(test)
    spk = [{_speaker(r) for r in part} for part in (train, valid, test)]
    assert spk[0] and not (spk[0] & spk[1]) and not (spk[0] & spk[2]) and not (spk[1] & spk[2])
    with open(out / "speakers.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and len({r["voice"] for r in table}) == 8
    split_of = {r["id"]: r["split"] for r in table}
    for name, part in zip(("train", "valid", "test"), spk):
        assert {split_of[s] for s in part} == {name}
    variants = [{r["variant"] for r in table if r["split"] == s} for s in ("train", "valid", "test")]
    assert not (variants[0] & variants[1]) and not (variants[0] & variants[2]) and not (variants[1] & variants[2])


def test_render_is_independent_of_synthesis_history():
    a = render("seven", "en+f3", 150, 50, 60, 0.5, seed=11)
    render("two", "en-us+klatt", 220, 20, 80, 0.8, seed=5)  # espeak-ng keeps state across utterances
    b = render("seven", "en+f3", 150, 50, 60, 0.5, seed=11)
    assert a.shape == (16000,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() == pytest.approx(0.5, abs=1e-6)


def test_corpus_is_deterministic_for_a_seed_and_any_number_of_workers(tmp_path):
    make_digits_corpus(tmp_path / "a", seed=1, n_speakers=4, per_word=1, progress=False, workers=1)
    make_digits_corpus(tmp_path / "b", seed=1, n_speakers=4, per_word=1, progress=False, workers=3)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert plan_corpus(seed=2, n_speakers=4, per_word=1) != plan_corpus(seed=1, n_speakers=4, per_word=1)


def test_refuses_existing_corpus_unless_overwrite(tmp_path):
    make_digits_corpus(tmp_path, seed=0, n_speakers=3, per_word=1, valid_frac=0.3, test_frac=0.3, progress=False)
    before = sorted(p.name for p in tmp_path.glob("*/*.wav"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_digits_corpus(tmp_path, seed=0, n_speakers=3, per_word=1, progress=False)
    make_digits_corpus(
        tmp_path, seed=9, n_speakers=3, per_word=1, valid_frac=0.3, test_frac=0.3, overwrite=True, progress=False
    )
    after = sorted(p.name for p in tmp_path.glob("*/*.wav"))
    assert len(after) == len(before) == 30 and after != before  # old clips were removed, not mixed in
    assert not list(tmp_path.rglob("*.tmp"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_speakers"):
        plan_corpus(n_speakers=2)
    with pytest.raises(ValueError, match="per_word"):
        plan_corpus(per_word=0)
    with pytest.raises(ValueError, match="espeak-ng has no voice"):
        digits.synthesize("one", "xx-nonexistent", 150, 50, 50, 0)


def test_cli(tmp_path, capsys):
    digits.main(
        [
            "--out",
            str(tmp_path / "c"),
            "--speakers",
            "3",
            "--per_word",
            "1",
            "--valid_frac",
            "0.3",
            "--test_frac",
            "0.3",
        ]
    )
    assert "wrote 30 clips" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already holds a corpus"):
        digits.main(["--out", str(tmp_path / "c"), "--speakers", "3"])
