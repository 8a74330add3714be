"""Feature-cache extraction command: outputs, bad-file report, resume after an interruption, CSV and melspec modes."""

import csv
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from density.audio.signal import load_audio, log_mel
from density.features import extract as hfr
from density.features.hubert import HubertFeatureReader

GOOD = ["zero/a.wav", "zero/b.wav", "zero/c.flac", "one/d.wav", "one/short.wav", "one/stereo.wav"]
BAD = ["one/corrupt.wav", "one/empty.wav", "one/rate8k.wav", "one/tiny.wav"]


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "sc"
    for d in ("zero", "one", "_background_noise_"):
        (root / d).mkdir(parents=True)
    for name in GOOD[:4]:
        sf.write(root / name, 0.1 * rng.standard_normal(16000).astype(np.float32), 16000)
    sf.write(root / "one/short.wav", 0.1 * rng.standard_normal(12000).astype(np.float32), 16000)
    sf.write(root / "one/stereo.wav", 0.1 * rng.standard_normal((16000, 2)).astype(np.float32), 16000)
    (root / "one/corrupt.wav").write_bytes(b"RIFF....WAVEgarbage")
    sf.write(root / "one/empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(root / "one/rate8k.wav", 0.1 * rng.standard_normal(8000).astype(np.float32), 8000)
    sf.write(root / "one/tiny.wav", np.zeros(50, np.float32), 16000)
    sf.write(root / "_background_noise_/noise.wav", np.zeros(16000, np.float32), 16000)
    return root


@pytest.fixture(scope="module")
def ckpt_path(fixtures_dir):
    return str(fixtures_dir / "hubert_fairseq" / "tiny_hubert_fairseq.pt")


def _run(root, out, ckpt, *extra):
    return hfr.main(
        [
            "--root",
            str(root),
            "--out",
            str(out),
            "--type",
            "hubert_L6",
            "--checkpoint",
            ckpt,
            "--batch_size",
            "2",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_outputs_and_bad_file_report(tree, tmp_path, ckpt_path, capsys):
    out = tmp_path / "feats"
    assert _run(tree, out, ckpt_path) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.pt"))
    assert written == sorted(n.rsplit(".", 1)[0] + ".pt" for n in GOOD)  # bad files and _background_noise_ left out
    assert not list(out.rglob("*.tmp"))
    reader = HubertFeatureReader(ckpt_path, layer=6)
    for name in ("zero/a.wav", "one/short.wav", "one/stereo.wav"):
        feat = torch.load(out / name.replace(".wav", ".pt"), weights_only=True)
        assert feat.dtype == torch.float32 and feat.dim() == 2 and feat.shape[1] == 48
        torch.testing.assert_close(feat, reader.get_feats(tree / name), rtol=0, atol=1e-5)
    assert torch.load(out / "zero/a.pt", weights_only=True).shape == (50, 48)
    report = (out / hfr.REPORT_NAME).read_text()
    assert report.startswith("10 files: 6 written, 0 already done, 4 skipped")
    for name in BAD:
        assert str(tree / name) in report
    assert "8000 Hz" in report and "no samples" in report and "too short" in report
    assert "4 skipped" in capsys.readouterr().out


def test_resample_option(tree, tmp_path, ckpt_path):
    out = tmp_path / "feats"
    _run(tree, out, ckpt_path, "--resample")
    assert torch.load(out / "one/rate8k.pt", weights_only=True).shape == (50, 48)  # 1 s at 8 kHz -> 16000 samples
    assert "3 skipped" in (out / hfr.REPORT_NAME).read_text()


def test_resume_after_interruption(tree, tmp_path, ckpt_path, monkeypatch):
    out = tmp_path / "feats"
    real_save, saves = torch.save, []

    def dying_save(obj, f):  # the third write is cut off half way, like a killed process
        saves.append(f)
        if len(saves) == 3:
            open(f, "wb").write(b"partial")
            raise KeyboardInterrupt
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _run(tree, out, ckpt_path)
    finished = sorted(out.rglob("*.pt"))
    assert len(finished) == 2 and not list(out.rglob("*.tmp"))  # nothing half written is left behind
    mtimes = {p: p.stat().st_mtime_ns for p in finished}

    saves.clear()
    monkeypatch.setattr(torch, "save", lambda obj, f: (saves.append(f), real_save(obj, f)))
    _run(tree, out, ckpt_path)
    assert len(saves) == len(GOOD) - 2  # only the unfinished outputs are computed
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert len(list(out.rglob("*.pt"))) == len(GOOD)
    assert "2 already done" in (out / hfr.REPORT_NAME).read_text()

    (out / "zero/b.pt").write_bytes(b"truncated")  # a damaged output is redone, the rest is left alone
    saves.clear()
    _run(tree, out, ckpt_path)
    assert [p.split("/")[-1].split(".")[1] for p in map(str, saves)] == ["b"]
    assert torch.load(out / "zero/b.pt", weights_only=True).shape == (50, 48)


def test_csv_mode_melspec(tree, tmp_path):
    split = tmp_path / "train.csv"
    with open(split, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(
            [
                [str(tree / "zero/a.wav"), "zero"],
                [str(tree / "one/short.wav"), "one"],
                [str(tree / "one/empty.wav"), "one"],
            ]
        )
    out = tmp_path / "mels"
    assert hfr.main(["--csv", str(split), "--out", str(out), "--type", "melspec", "--device", "cpu"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.pt")) == ["one/short.pt", "zero/a.pt"]
    mel = torch.load(out / "zero/a.pt", weights_only=True)
    assert mel.shape == (100, 128)
    torch.testing.assert_close(mel, log_mel(load_audio(tree / "zero/a.wav")).T, rtol=0, atol=1e-5)
    assert torch.load(out / "one/short.pt", weights_only=True).shape == (75, 128)
    assert "empty.wav" in (out / hfr.REPORT_NAME).read_text()


def test_cli_errors_and_help(tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        hfr.main(["--help"])
    assert e.value.code == 0 and "--checkpoint" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        hfr.main(["--root", str(tree), "--out", str(tmp_path / "o"), "--type", "hubert_L6"])
    assert "--checkpoint is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        hfr.main(["--root", str(tree), "--out", str(tmp_path / "o"), "--type", "mfcc"])
    assert "hubert_L<layer>" in capsys.readouterr().err


@pytest.mark.parametrize("tail", [1, 319, 700])
def test_a_last_chunk_shorter_than_the_receptive_field_is_encoded(ckpt_path, tail):
    """A file of k * max_chunk + 1..319 samples is padded to a 320-sample last chunk (scaled down: max_chunk
    3200 instead of 1,600,000); other lengths give the features they gave before (chunk by chunk)."""
    reader = HubertFeatureReader(ckpt_path, layer=6, max_chunk=3200)
    wav = 0.1 * torch.randn(2 * 3200 + tail, generator=torch.Generator().manual_seed(0))
    feats = reader.get_feats(audio=wav)
    assert feats.shape[1] == 48 and feats.isfinite().all()
    padded = reader._pad(wav)[None]
    chunks = list(padded.split(3200, dim=-1))
    if chunks[-1].shape[-1] < reader.receptive_field:
        chunks[-2:] = [torch.cat(chunks[-2:], dim=-1)]
    else:
        assert tail == 700  # the unchanged case: every chunk long enough
    with torch.no_grad():
        expected = torch.cat([reader.model(c).last_hidden_state for c in chunks], dim=1)[0]
    torch.testing.assert_close(feats, expected, rtol=0, atol=0)


def test_a_file_that_fails_to_encode_is_reported_and_skipped(tree, tmp_path, ckpt_path, monkeypatch):
    """Any per-file exception is skipped and reported; the run finishes and writes its report."""
    extract = HubertFeatureReader.extract

    def failing(self, x):
        if x.shape[-1] == 12160:  # one/short.wav (12000 samples, padded): the only clip of that length
            raise RuntimeError("encoder fault")
        return extract(self, x)

    monkeypatch.setattr(HubertFeatureReader, "extract", failing)
    out = tmp_path / "feats"
    assert _run(tree, out, ckpt_path) == 0
    report = (out / hfr.REPORT_NAME).read_text()
    assert report.startswith("10 files: 5 written, 0 already done, 5 skipped")
    assert f"{tree / 'one/short.wav'}: feature extraction failed (RuntimeError: encoder fault)" in report
    assert (out / "zero/a.pt").is_file() and not (out / "one/short.pt").exists()


def test_output_name_collisions_are_an_error_before_work(tree, tmp_path, capsys):
    other = tmp_path / "other" / "zero"
    other.mkdir(parents=True)
    sf.write(other / "a.wav", np.zeros(16000, np.float32), 16000)
    split = tmp_path / "train.csv"
    with open(split, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], [str(tree / "zero/a.wav"), "zero"], [str(other / "a.wav"), "zero"]])
    out = tmp_path / "mels"
    with pytest.raises(SystemExit) as e:
        hfr.main(["--csv", str(split), "--out", str(out), "--type", "melspec", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert f"{other / 'a.wav'} and {tree / 'zero/a.wav'} would both be written to zero/a.pt" in err
    assert not out.exists()


def test_stale_temporaries_of_a_killed_run_are_removed(tree, tmp_path):
    out = tmp_path / "mels"
    (out / "zero").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = re.sub(r"\W", "_", socket.gethostname())
    stale = out / "zero" / f".a.pt.{host}-{dead.stdout.strip()}.abcd1234.tmp"  # this host, writer gone
    stale.write_bytes(b"half")
    old = out / "zero" / ".b.pt.k2j4h5g6.tmp"  # written by an earlier version (no owner in the name), long ago
    old.write_bytes(b"half")
    os.utime(old, (0, 0))
    assert hfr.main(["--root", str(tree), "--out", str(out), "--type", "melspec", "--device", "cpu"]) == 0
    assert not stale.exists() and not old.exists()
    assert (out / "zero/a.pt").stat().st_mode & 0o777 == 0o666 & ~current_umask()


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bad_device_is_refused_before_loading(tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        hfr.main(["--root", str(tree), "--out", str(tmp_path / "o"), "--type", "melspec", "--device", "tpu"])
    assert e.value.code == 2 and "--device tpu: not a device" in capsys.readouterr().err


def test_a_csv_row_that_would_escape_the_output_folder_is_refused_before_work(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    (corpus / "eight").mkdir(parents=True)
    sf.write(corpus / "eight" / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(corpus / "victim.wav", np.zeros(16000, dtype=np.float32), 16000)
    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"not yours")
    split = tmp_path / "split.csv"
    split.write_text(
        f"path,label\n{corpus / 'eight' / 'a.wav'},eight\n{corpus / 'eight' / '..' / 'victim.wav'},eight\n"
    )
    out = tmp_path / "features"
    with pytest.raises(SystemExit) as exit_info:
        hfr.main(["--csv", str(split), "--out", str(out), "--type", "melspec", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert re.search(r"^error: .*victim\.wav: its output \.\./victim\.pt would lie outside", capsys.readouterr().err)
    assert victim.read_bytes() == b"not yours" and not out.exists()


def test_a_csv_that_is_not_utf8_is_one_error_line_naming_it(tmp_path, capsys):
    """It used to be `error: 'utf-8' codec can't decode byte 0xe9 ...`, naming no file."""
    split = tmp_path / "split.csv"
    split.write_bytes("path,label\n/data/z\xe9ro/a.wav,zero\n".encode("latin-1"))
    with pytest.raises(SystemExit) as e:
        hfr.main(["--csv", str(split), "--out", str(tmp_path / "o"), "--type", "melspec", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {split}: line 2 is not UTF-8 text (byte 0xe9); save the CSV as UTF-8")
    assert not (tmp_path / "o").exists()
