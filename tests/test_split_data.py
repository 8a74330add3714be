import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from density.data import speech_commands
from density.data import splits as split_data
from density.data.digits import make_digits_corpus
from density.runtime import cli
from density.runtime.download import DownloadError

REPO = Path(__file__).resolve().parents[1]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tone(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(160, np.float32), 16000)


@pytest.fixture
def tree(tmp_path):
    """A tiny Speech Commands tree: two digits, one other word, background noise, both lists."""
    root = tmp_path / "sc"
    for rel in [
        "zero/a_nohash_0.wav",
        "zero/b_nohash_0.wav",
        "zero/c_nohash_0.wav",
        "one/a_nohash_0.wav",
        "one/b_nohash_0.wav",
        "one/c_nohash_0.wav",
        "yes/a_nohash_0.wav",
        "yes/b_nohash_0.wav",
        "_background_noise_/noise.wav",
    ]:
        _tone(root / rel)
    (root / "validation_list.txt").write_text("zero/b_nohash_0.wav\none/b_nohash_0.wav\nyes/b_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("zero/c_nohash_0.wav\none/c_nohash_0.wav\n")
    return root


@pytest.mark.parametrize("flag", ["true", "True", "1", "yes"])
def test_sc09_only_true(tree, tmp_path, flag, capsys):
    split_data.main(["--root_path", str(tree), "--sc09_only", flag, "--out_dir", str(tmp_path / "splits")])
    out = capsys.readouterr().out
    for name in ("train", "valid", "test"):
        assert f"sc09-{name}.csv" in out
    train, valid, test = (_read(tmp_path / "splits" / f"sc09-{n}.csv") for n in ("train", "valid", "test"))
    assert [r["path"] for r in train] == [str(tree / "one/a_nohash_0.wav"), str(tree / "zero/a_nohash_0.wav")]
    assert [r["label"] for r in train] == ["one", "zero"]
    assert [r["path"] for r in valid] == [str(tree / "one/b_nohash_0.wav"), str(tree / "zero/b_nohash_0.wav")]
    assert [r["path"] for r in test] == [str(tree / "one/c_nohash_0.wav"), str(tree / "zero/c_nohash_0.wav")]
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == [
        "sc09-test.csv",
        "sc09-train.csv",
        "sc09-valid.csv",
    ]  # no temp files left


@pytest.mark.parametrize("flag", ["false", "False", "0", "no"])
def test_sc09_only_false_keeps_all_words(tree, tmp_path, flag):
    split_data.main(["--root_path", str(tree), "--sc09_only", flag, "--out_dir", str(tmp_path / "s")])
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["test.csv", "train.csv", "valid.csv"]
    train = [r["path"] for r in _read(tmp_path / "s" / "train.csv")]
    assert str(tree / "yes/a_nohash_0.wav") in train
    assert not any("_background_noise_" in p for p in train)  # folders with '_' never enter train
    assert str(tree / "yes/b_nohash_0.wav") in [r["path"] for r in _read(tmp_path / "s" / "valid.csv")]


def test_bad_flag_is_rejected(tree, tmp_path):
    with pytest.raises(SystemExit):
        split_data.main(["--root_path", str(tree), "--sc09_only", "maybe", "--out_dir", str(tmp_path)])


@pytest.mark.parametrize("missing", ["validation_list.txt", "testing_list.txt"])
def test_missing_list_is_an_error(tree, tmp_path, missing):
    (tree / missing).unlink()
    with pytest.raises(SystemExit, match=missing):
        split_data.main(["--root_path", str(tree), "--sc09_only", "true", "--out_dir", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists()


def test_empty_tree_and_missing_list_entry(tree, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no .*found under .*empty"):
        split_data.main(["--root_path", str(empty), "--out_dir", str(tmp_path / "s")])
    with pytest.raises(SystemExit, match="digit-word"):  # only non-digit words: empty for SC09
        split_data.main(["--root_path", str(tree / "yes"), "--sc09_only", "1", "--out_dir", str(tmp_path / "s")])
    (tree / "testing_list.txt").write_text("zero/c_nohash_0.wav\none/gone_nohash_0.wav\n")
    with pytest.raises(SystemExit, match="one/gone_nohash_0.wav"):
        split_data.main(["--root_path", str(tree), "--sc09_only", "true", "--out_dir", str(tmp_path / "s")])


@pytest.mark.slow
def test_cli_on_generated_corpus(tmp_path):
    root = tmp_path / "digits"
    make_digits_corpus(root, seed=4, n_speakers=5, per_word=1, valid_frac=0.2, test_frac=0.2, progress=False)
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "split_data.py"),
            "--root_path",
            str(root),
            "--sc09_only",
            "true",
            "--out_dir",
            str(tmp_path / "splits"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "sc09-train.csv (30 files)" in res.stdout and "sc09-valid.csv (10 files)" in res.stdout
    parts = {n: _read(tmp_path / "splits" / f"sc09-{n}.csv") for n in ("train", "valid", "test")}
    assert sum(len(p) for p in parts.values()) == 50
    for rows in parts.values():
        assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
        for r in rows:
            assert Path(r["path"]).is_file() and Path(r["path"]).parent.name == r["label"]
    speakers = {n: {Path(r["path"]).name.split("_nohash_")[0] for r in rows} for n, rows in parts.items()}
    assert not speakers["train"] & speakers["valid"] and not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    listed = (root / "validation_list.txt").read_text().split()
    assert sorted(str(root / r) for r in listed) == [r["path"] for r in parts["valid"]]


OFFICIAL_URL = "http://download.tensorflow.org/data/speech_commands_v{version}.tar.gz"
# torchaudio's SHA-256 pins (torchaudio/datasets/speechcommands.py, _CHECKSUMS), recorded here a second time on
# purpose: a changed pin must be a deliberate edit in both places
PINNED_SHA256 = {
    "0.02": "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
    "0.01": "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
}


def test_download_fetches_the_pinned_archive_of_the_version_unless_overridden(tmp_path, monkeypatch):
    """What --download asks for (the transfer itself: tests/test_paper_path.py, on a local server)."""
    monkeypatch.chdir(tmp_path)  # the default --out_dir ./splits: CSVs of the caller's own splits there are refused
    asked = []

    def offline(url, dest, sha256, progress=True):
        asked.append((url, dest, sha256))
        raise DownloadError(f"download of {url} failed after 0 bytes: offline")

    monkeypatch.setattr(speech_commands, "download_resumable", offline)
    monkeypatch.delenv(speech_commands.URL_ENV, raising=False)
    monkeypatch.delenv(speech_commands.SHA_ENV, raising=False)
    for extra in ([], ["--version", "0.01"]):
        with pytest.raises(DownloadError, match="offline"):
            split_data.main(["--download", str(tmp_path / "sc"), "--sc09_only", "true", *extra])
    monkeypatch.setenv(speech_commands.URL_ENV, "http://127.0.0.1:9/mirror.tar.gz")
    monkeypatch.setenv(speech_commands.SHA_ENV, "1" * 64)
    with pytest.raises(DownloadError):
        split_data.main(["--download", str(tmp_path / "sc"), "--out_dir", str(tmp_path / "splits")])
    official = [
        (OFFICIAL_URL.format(version=v), tmp_path / "sc" / f"speech_commands_v{v}.tar.gz", PINNED_SHA256[v])
        for v in ("0.02", "0.01")
    ]
    mirror = ("http://127.0.0.1:9/mirror.tar.gz", tmp_path / "sc" / "speech_commands_v0.02.tar.gz", "1" * 64)
    assert asked == [*official, mirror]
    assert not (tmp_path / "splits").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--download", "sc", "--version", "0.03"], "invalid choice: '0.03'"),
        (["--root_path", "sc", "--download", "sc"], "not allowed with argument"),
        (["--root_path", "sc", "--version", "0.01"], "--version goes with --download"),
        (["--sc09_only", "true"], "one of the arguments --root_path --download is required"),
    ],
)
def test_download_option_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        split_data.main([*argv, "--out_dir", str(tmp_path / "splits")])
    assert stop.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "splits").exists()


def test_existing_csvs_are_refused_before_the_scan_unless_overwrite(tree, tmp_path, capsys, monkeypatch):
    """split_data.py used to replace existing split CSVs without a word."""
    out = tmp_path / "splits"
    out.mkdir()
    (out / "sc09-valid.csv").write_text("path,label\nmine.wav,zero\n")
    argv = ["--root_path", str(tree), "--sc09_only", "true", "--out_dir", str(out)]
    monkeypatch.setattr(split_data, "make_splits", lambda *a: pytest.fail("tree scanned"))
    with pytest.raises(SystemExit) as stop:
        cli.run(split_data.main, argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == f"error: {out / 'sc09-valid.csv'} exists already: give --overwrite " + (
        "to replace it, or choose another output folder\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["sc09-valid.csv"]
    with pytest.raises(SystemExit):  # the download is not started either
        cli.run(split_data.main, ["--download", str(tmp_path / "sc2"), "--sc09_only", "true", "--out_dir", str(out)])
    assert not (tmp_path / "sc2").exists()
    monkeypatch.undo()
    split_data.main([*argv, "--sc09_only", "false"])  # other file names: nothing to refuse
    split_data.main([*argv, "--overwrite"])
    assert [r["path"] for r in _read(out / "sc09-valid.csv")] == [
        str(tree / "one/b_nohash_0.wav"),
        str(tree / "zero/b_nohash_0.wav"),
    ]


def test_a_csv_that_is_not_utf8_names_the_file_and_the_fix(tmp_path):
    """Reading one used to end in a bare UnicodeDecodeError naming no file."""
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("path,label\nz\xe9ro/a.wav,zero\n".encode("latin-1"))
    with pytest.raises(split_data.SplitError, match=rf"{bad}: line 2 is not UTF-8 text .*iconv .*split_data.py"):
        split_data.read_split_csv(bad)
