"""diagnose.py: word-frame edits, the regression fit, the discriminator probe and the classifier ceiling, on tiny
models, clips and a tiny digits corpus made here."""

import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from helpers import make_tiny_digits, scoring_args, tiny_cfg, tiny_overrides, train_tiny_classifier

from density.audio.signal import LOG_MEL_SILENCE
from density.config import config_to_yaml
from density.gan import diagnose
from density.models import Discriminator, Generator

REPO = Path(__file__).resolve().parents[1]
TINY_MEL = [*tiny_overrides(mel=True), "normalize_features=true"]


def word_clip(start, length, frames=20):
    """(frames, 128) log-mel: silence, then a word whose bright band climbs one bin per frame."""
    x = torch.full((frames, 128), LOG_MEL_SILENCE)
    for t in range(length):
        x[start + t] = -4.0
        x[start + t, 10 + 3 * t : 14 + 3 * t] = 0.0
    return x


@pytest.fixture
def features(tmp_path):
    folder = tmp_path / "features" / "one"
    folder.mkdir(parents=True)
    for i in range(12):
        torch.save(word_clip(start=2 + i % 4, length=6 + i % 3), folder / f"clip{i}.pt")
    return str(tmp_path / "features")


def test_word_edits_move_only_word_frames():
    x = torch.stack([word_clip(3, 6), word_clip(5, 4)])  # [2, 20, 128]
    words = diagnose.word_frames(x)
    assert words[0].nonzero()[:, 0].tolist() == list(range(3, 9))
    for how in ("static", "reversed", "shuffled"):
        y = diagnose.edit_words(x, how, torch.Generator().manual_seed(0))
        assert torch.equal(y[~words], x[~words])  # silence untouched
        for b in range(2):
            w = words[b]
            assert torch.allclose(y[b, w].mean(0), x[b, w].mean(0))  # same frames, other order (or their mean)
    static = diagnose.edit_words(x, "static")
    assert torch.allclose(static[0, 3], static[0, 8]) and not torch.allclose(x[0, 3], x[0, 8])
    assert torch.equal(diagnose.edit_words(x, "reversed")[0, 3:9], x[0, 3:9].flip(0))
    silenced = diagnose.silence_outside_words(x + 1.0)
    assert torch.all(silenced[~words] == LOG_MEL_SILENCE) and torch.equal(silenced[words], (x + 1.0)[words])


def test_time_resolution_keeps_the_average_and_removes_detail():
    x = torch.stack([word_clip(3, 6), word_clip(5, 4)])  # [2, 20, 128]
    assert torch.allclose(diagnose.time_resolution(x, 20), x)  # one span per frame: unchanged
    flat = diagnose.time_resolution(x, 1)
    assert torch.allclose(flat, x.mean(1, keepdim=True).expand_as(x))  # one span: the clip's mean spectrum
    coarse = diagnose.time_resolution(x, 5)
    assert torch.allclose(coarse.mean(1), x.mean(1), atol=0.5)
    assert (coarse[:, 1:] - coarse[:, :-1]).abs().sum() < (x[:, 1:] - x[:, :-1]).abs().sum()


@pytest.mark.slow
def test_ceiling_scores_real_static_and_coarse_clips(tmp_path, capsys):
    splits = make_tiny_digits(tmp_path)
    classifier = train_tiny_classifier(splits, tmp_path / "classifier", steps=20)
    assert (
        diagnose.main(
            [
                "ceiling",
                *scoring_args(splits, classifier),
                "--n",
                "12",
                "--frames",
                "2",
                "24",
                "--griffin_lim_iters",
                "2",
                "--cache_dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    rows = re.findall(r"^  (\S.*?)\s+FID\s+([\d.]+)\s+IS\s+([\d.]+)$", capsys.readouterr().out, flags=re.M)
    assert [name for name, _, _ in rows] == [
        "real test clips",
        "word frames set to their mean",
        "2 frames per second",
        "24 frames per second",
    ]
    for _, fid, inception in rows:
        assert float(fid) >= 0 and float(inception) >= 1  # split-half IS: KL to the other half's marginal
    assert len({fid for _, fid, _ in rows}) == 4  # every edit changes what the classifier sees
    assert list((tmp_path / "cache").glob("sc09-train-real-*.npz"))  # the training split's scores are cached


def test_fit_learns_prints_both_l1s_and_writes_png(features, tmp_path, capsys):
    png = tmp_path / "fit.png"

    def fit(steps):
        assert (
            diagnose.main(
                [
                    "fit",
                    "--features",
                    features,
                    "--n",
                    "8",
                    "--steps",
                    str(steps),
                    "--batch_size",
                    "4",
                    "--png",
                    str(png),
                    "lr=1e-2",
                    *TINY_MEL,
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        return map(float, re.search(r"fit over 8 clips: ([\d.]+); static L1 .*: ([\d.]+);", out).groups())

    start_l1, static_l1 = fit(1)
    fit_l1, static_again = fit(150)
    assert static_again == static_l1 and 0 < static_l1 < start_l1
    assert fit_l1 < 0.5 * start_l1
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[1] > 2 * image.shape[0]  # two rows of eight spectrograms


def test_probe_scores_six_kinds_of_clip(features, tmp_path, capsys):
    torch.manual_seed(0)
    cfg = tiny_cfg(mel=True)
    g = Generator(cfg.rp_w_cfg)
    g.calibrate_norm_ema(torch.randn(16, g.z_dim))
    d = Discriminator.from_config(cfg)
    torch.save(
        {
            "cfg_yaml": config_to_yaml(cfg),
            "d_state_dict": d.state_dict(),
            "g_ema_state_dict": g.state_dict(),
            "feature_norm": {"mean": torch.full((128,), -8.0), "std": torch.full((128,), 3.0)},
            "steps": 7,
        },
        tmp_path / "ckpt.pt",
    )
    assert diagnose.main(["probe", "--checkpoint", str(tmp_path / "ckpt.pt"), "--features", features, "--n", "8"]) == 0
    out = capsys.readouterr().out
    logits = re.findall(r"^  (\S.*?)\s+(-?[\d.]+)$", out, flags=re.M)
    assert [name for name, _ in logits] == [
        "real clips",
        "real, word frames reversed",
        "real, word frames shuffled",
        "real, word frames set to their mean",
        "generated (EMA G)",
        "generated, non-word frames silenced",
    ]
    assert "step 7" in out
    values = [float(v) for _, v in logits]
    assert len(set(values)) > 1  # the edits change what the discriminator sees


@pytest.mark.slow
def test_bad_input_is_one_line(features, tmp_path):
    def run(*args):
        r = subprocess.run([sys.executable, "diagnose.py", *args], cwd=REPO, capture_output=True, text=True)
        return r.returncode, r.stderr.strip().splitlines()

    code, err = run("fit", "--features", features, "--n", "50", "--steps", "1", *TINY_MEL)
    assert code == 2 and len(err) == 1 and "--n 50" in err[0] and "only 12 feature files" in err[0]
    code, err = run("fit", "--features", features, "--steps", "1")  # the HuBERT default
    assert code == 2 and err == ["error: diagnose.py works on log-mel models; this one has data_type=hubert_L6"]
    code, err = run("probe", "--checkpoint", str(tmp_path / "missing.pt"), "--features", features)
    assert code == 2 and len(err) == 1 and "missing.pt" in err[0]
    code, err = run("ceiling", "--classifier", "c.pt", "--train_csv", "a.csv", "--test_csv", "b.csv", "--frames", "0")
    assert code == 2 and len(err) == 1 and "error: --frames must be >= 1" in err[0]
    bad_csv = tmp_path / "test.csv"
    bad_csv.write_text(f"path,label\n{tmp_path / 'gone.wav'},one\n")
    code, err = run("ceiling", "--classifier", "c.pt", "--train_csv", "a.csv", "--test_csv", str(bad_csv), "--n", "1")
    assert code == 2 and len(err) == 1 and "gone.wav" in err[0]
