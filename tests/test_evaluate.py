"""evaluate.py end to end: known answers, reference rows on a tiny digits corpus, generator checkpoints, errors."""

import json
from functools import partial

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import make_checkpoint, make_tiny_digits, scoring_args, tiny_vocoder, train_tiny_classifier

from density import metrics as M
from density.evaluation import evaluate, scoring
from density.evaluation.classifier import file_sha256, load_classifier
from density.vocoders.vocoder import save_vocoder

torch.set_num_threads(1)


# ---------------------------------------------------------------- known answers (function level)


def test_fid_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8, generator=g)
    assert M.fid(x, x) == pytest.approx(0, abs=1e-6)  # identical feature sets
    shift = torch.tensor([1.0, -2.0, 0, 0, 0, 0, 0, 2.0])  # N(0, I) vs N(shift, 4 I): |shift|^2 + 8 (2 - 1)^2
    y = 2 * torch.randn(20000, 8, generator=g) + shift
    assert M.fid(torch.randn(20000, 8, generator=g), y) == pytest.approx(9 + 8, rel=0.02)  # N = 20000: 2 %


def test_inception_score_known_answers():
    k, n = 10, 2000
    one_hot = torch.nn.functional.one_hot(torch.arange(n) % k, k).double()  # evenly spread one-hot, N = 2000
    assert M.inception_score(one_hot.log()) == pytest.approx(k, rel=0.01)
    same = torch.tensor([0.05, 0.6, 0.1, 0.25]).log().expand(n, 4)  # identical predictions
    assert M.inception_score(same) == pytest.approx(1, abs=1e-12)
    assert M.modified_inception_score(same.exp()) == pytest.approx(1, abs=1e-12)


def test_ndb_of_a_set_against_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(1000, 6))
    assert M.ndb(x, x.copy(), k=20) == 0.0


def test_row_metrics_and_table():
    rng = np.random.default_rng(0)
    logits = np.eye(4)[np.arange(400) % 4] * 20.0
    scores = scoring.Scores(rng.normal(size=(400, 3)), logits, rng.normal(size=(400, 5)))
    ref = scoring.make_reference(scores, ndb_k=5)
    row = scoring.row_metrics("same", scores, ref)
    assert row["n"] == 400 and row["fid"] == pytest.approx(0, abs=1e-9) and row["ndb_over_k"] == 0
    assert row["inception_score"] == pytest.approx(4, rel=0.03) and row["am_score"] == pytest.approx(0, abs=1e-6)
    assert row["linear_separability"] > 0
    table = scoring.markdown_table([row, dict(row, name="x", linear_separability=None)]).splitlines()
    assert table[0].startswith("| set | N | FID") and table[2].startswith("| same | 400 | 0.000 | 4.0")
    assert table[3].endswith("| – |")


# ---------------------------------------------------------------- audio mode on a tiny digits corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(splits folder, classifier_best.pt) of the tiny corpus, classifier trained for 40 steps."""
    folder = tmp_path_factory.mktemp("digits")
    splits = make_tiny_digits(folder)
    return splits, train_tiny_classifier(splits, folder / "classifier")


def audio_args(corpus, tmp_path, *extra):
    return [
        *scoring_args(*corpus),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--n",
        "24",
        "--batch_size",
        "8",
        "--ndb_k",
        "5",
        "--device",
        "cpu",
        *extra,
    ]


def test_wav_dir_reference_rows_and_ordering(corpus, tmp_path, capsys):
    splits, _ = corpus
    rows = evaluate.main(
        audio_args(corpus, tmp_path, "--wav_dir", str(splits.parent / "digits"), "--json", str(tmp_path / "out.json"))
    )
    names = [r["name"] for r in rows]
    assert names[1:] == ["real train", "real test", "Griffin-Lim of real test", "white noise"]
    by = {r["name"]: r for r in rows}
    assert [by[k]["n"] for k in names] == [120, 80, 20, 20, 24]  # every row has its N
    assert by["real train"]["fid"] == pytest.approx(0, abs=1e-6) and by["real train"]["ndb_over_k"] == 0
    # what the evaluation relies on: resynthesis stays near the real clips, noise is far from both (with 20 test
    # clips and a 40-step classifier, real vs Griffin-Lim can come out either way: the 32-band input barely sees phase)
    real_fid, gl_fid, noise_fid = (by[k]["fid"] for k in ("real test", "Griffin-Lim of real test", "white noise"))
    assert max(real_fid, gl_fid) < noise_fid / 4
    assert abs(gl_fid - real_fid) < noise_fid / 10
    assert by["real train"]["inception_score"] > by["white noise"]["inception_score"]
    out = capsys.readouterr().out
    assert "| set | N | FID ↓ | IS ↑ | mIS ↑ | AM ↓ | NDB/K ↓ | LS ↓ |" in out
    assert "| white noise | 24 |" in out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["classes"][0] == "zero" and [r["name"] for r in saved["rows"]] == names
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3  # train, test, Griffin-Lim of test


def test_checkpoint_hubert_with_hifigan_file_is_deterministic_and_cached(corpus, tmp_path, monkeypatch):
    make_checkpoint(tmp_path / "g.pt")
    save_vocoder(tiny_vocoder(), tmp_path / "voc.pt")
    args = audio_args(corpus, tmp_path, "--checkpoint", str(tmp_path / "g.pt"), "--vocoder", str(tmp_path / "voc.pt"))
    first = evaluate.main(args + ["--save_wavs", str(tmp_path / "wavs")])
    assert first[0]["name"] == "g.pt" and first[0]["n"] == 24 and "linear_separability" in first[0]
    assert sorted(p.name for p in (tmp_path / "wavs").iterdir())[:2] == ["00000.wav", "00001.wav"]
    assert len(list((tmp_path / "wavs").iterdir())) == 24
    monkeypatch.setattr(scoring, "load_batches", lambda *a, **k: pytest.fail("real sets must come from the cache"))
    again = evaluate.main(args)  # same seed: same clips; real-set scores read back from the cache
    assert again == first


def test_repeats_give_the_mean_and_std_of_consecutive_seeds_and_bootstrapped_real_rows(corpus, tmp_path, capsys):
    make_checkpoint(tmp_path / "g.pt")
    save_vocoder(tiny_vocoder(), tmp_path / "voc.pt")
    args = audio_args(
        corpus,
        tmp_path,
        "--checkpoint",
        str(tmp_path / "g.pt"),
        "--vocoder",
        str(tmp_path / "voc.pt"),
        "--n",
        "16",
        "--seed",
        "5",
    )
    rows = evaluate.main(args + ["--repeats", "3", "--json", str(tmp_path / "out.json")])
    table = capsys.readouterr().out
    singles = [evaluate.main(args[:-1] + [str(seed)])[0] for seed in (5, 6, 7)]
    for key in ("fid", "inception_score", "am_score", "ndb_over_k"):
        values = [r[key] for r in singles]
        assert rows[0][key] == pytest.approx(np.mean(values)) and rows[0][f"{key}_std"] == pytest.approx(
            np.std(values, ddof=1)
        ), key
    assert len({r["fid"] for r in singles}) == 3  # three different draws
    by = {r["name"]: r for r in rows}
    assert all(r["repeats"] == 3 and r["fid_std"] > 0 for r in rows)
    assert by["real train"]["fid"] > 0  # bootstrap resamples of the training set, not the set itself
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["repeats"] == 3 and saved["rows"][0]["fid_std"] == pytest.approx(rows[0]["fid_std"])
    assert f"| g.pt | 16 | {rows[0]['fid']:.3f} ± {rows[0]['fid_std']:.3f} |" in table


def test_checkpoint_mel_with_griffin_lim(corpus, tmp_path):
    make_checkpoint(tmp_path / "mel.pt", mel=True)
    rows = evaluate.main(audio_args(corpus, tmp_path, "--checkpoint", str(tmp_path / "mel.pt"), "--n", "16"))
    assert rows[0]["name"] == "mel.pt" and rows[0]["n"] == 16 and np.isfinite(rows[0]["fid"])


def test_generator_api_for_a_report(corpus):
    """The pieces a report calls: a Reference from the cached training scores, then one row per generator."""
    from helpers import tiny_cfg

    from density.evaluation.classifier import file_sha256, load_classifier
    from density.inference.asgan import ASGANInference
    from density.models import Generator
    from density.vocoders.vocoder import GriffinLimVocoder

    splits, path = corpus
    clf = load_classifier(path)
    train = scoring.cached_scores(clf, file_sha256(path), splits / "sc09-train.csv", "real", cache_dir=None)
    torch.manual_seed(0)
    cfg = tiny_cfg(mel=True)
    model = ASGANInference(Generator(cfg.rp_w_cfg), GriffinLimVocoder(n_iter=2), cfg)  # "at initialisation"
    row = scoring.evaluate_generator(model, clf, scoring.make_reference(train, ndb_k=5), "init", n=8, batch_size=8)
    assert row["name"] == "init" and row["n"] == 8 and set(row) >= {"fid", "inception_score", "ndb_over_k"}


def test_clear_errors_name_the_path(corpus, tmp_path):
    base = audio_args(corpus, tmp_path)
    missing = tmp_path / "none.pt"
    with pytest.raises(SystemExit, match=f"{missing} does not exist.*train_classifier.py"):
        evaluate.main(base + ["--classifier", str(missing), "--wav_dir", str(tmp_path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=f"{tmp_path / 'empty'}: no .wav or .flac files found"):
        evaluate.main(base + ["--wav_dir", str(tmp_path / "empty")])
    (tmp_path / "rate").mkdir()
    sf.write(tmp_path / "rate" / "a.wav", np.zeros(8000, np.float32), 8000)
    with pytest.raises(SystemExit, match=r"a\.wav: sample rate is 8000 Hz, expected 16000 Hz.*--resample"):
        evaluate.main(base + ["--wav_dir", str(tmp_path / "rate")])
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.wav").write_text("not audio")
    with pytest.raises(SystemExit, match=r"notes\.wav: not a readable audio file"):
        evaluate.main(base + ["--wav_dir", str(tmp_path / "text")])
    with pytest.raises(SystemExit):
        evaluate.main(["--wav_dir", str(tmp_path / "rate")])  # no classifier / train_csv: usage error
    assert not (tmp_path / "cache").exists()  # every error came before any scoring


def test_a_damaged_cache_entry_is_scored_again_and_rewritten(corpus, tmp_path, capsys):
    """A zero-byte file in the evaluation cache used to end evaluate.py in EOFError."""
    splits, classifier_path = corpus
    classifier = load_classifier(classifier_path)
    real_set = partial(
        scoring.cached_scores, classifier, file_sha256(classifier_path), splits / "sc09-test.csv", "real"
    )
    fresh = real_set(tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("*.npz")
    for damage in (b"", b"PK\x03\x04 truncated", entry.read_bytes()[:100]):
        entry.write_bytes(damage)
        again = real_set(tmp_path / "cache")
        np.testing.assert_array_equal(again.logits, fresh.logits)
        assert f"{entry}: unreadable cache entry" in capsys.readouterr().err
        with np.load(entry) as f:  # rewritten whole
            np.testing.assert_array_equal(f["feats"], fresh.feats)
    np.savez(entry, feats=fresh.feats[:3], logits=fresh.logits[:3])  # readable, but not this CSV's clips
    assert len(real_set(tmp_path / "cache").logits) == len(fresh.logits)
    assert "for 20 clips" in capsys.readouterr().err


def test_outputs_are_checked_before_any_scoring(corpus, tmp_path, capsys, monkeypatch):
    """--json DIR used to fail only after all the scoring, a directory as --classifier was 'does not exist', and
    --save_wavs replaced the wavs in its folder without a word."""
    monkeypatch.setattr(evaluate, "load_classifier", lambda *a, **k: pytest.fail("scoring started"))
    make_checkpoint(tmp_path / "g.pt")
    generator = audio_args(corpus, tmp_path, "--checkpoint", str(tmp_path / "g.pt"))
    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "00003.wav").write_bytes(b"mine")
    (tmp_path / "file").write_text("")
    cases = [
        (["--json", str(tmp_path)], f"--json {tmp_path} is a directory; give a file path"),
        (["--json", str(tmp_path / "file" / "out.json")], f"lies below the file {tmp_path / 'file'}"),
        (
            ["--save_wavs", str(tmp_path / "wavs")],
            f"{tmp_path / 'wavs' / '00003.wav'} exists already: give --overwrite",
        ),
        (["--save_wavs", str(tmp_path / "file")], "is a file; give a folder"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as e:
            evaluate.main([*generator, *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    evaluate.parse_args([*generator, "--save_wavs", str(tmp_path / "wavs"), "--overwrite"])  # allowed
    evaluate.parse_args([*generator, "--save_wavs", str(tmp_path / "wavs"), "--n", "3"])  # 00003.wav is not written
    assert (tmp_path / "wavs" / "00003.wav").read_bytes() == b"mine" and not (tmp_path / "cache").exists()
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=rf"classifier file {tmp_path} is a directory: give the file in it"):
        evaluate.main(audio_args(corpus, tmp_path, "--wav_dir", str(tmp_path / "wavs"), "--classifier", str(tmp_path)))
