"""train_classifier.py on a tiny digits corpus: outputs, exact resume after SIGTERM, augmentation, errors."""

import json
import os
import signal
from functools import partial

import pytest
import torch
from helpers import assert_finished_run_trains_nothing, classifier_args, files, make_tiny_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from density.audio.signal import AudioError
from density.config import ConfigError
from density.evaluation import train_classifier
from density.evaluation.classifier import SC09_CLASSES, load_classifier
from density.runtime import checkpoint as ckpt
from density.runtime import cli
from density.runtime.run import RunError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return make_tiny_digits(tmp_path_factory.mktemp("digits"))


def test_run_writes_best_checkpoint_results_and_scalars(splits, tmp_path, capsys):
    run = tmp_path / "run"
    result = train_classifier.main(
        classifier_args(
            splits,
            run,
            "max_steps=6",
            "validation_interval=3",
            "summary_interval=1",
            "checkpoint_interval=2",
            "keep_last_checkpoints=2",
        )
    )
    assert sorted(p.name for p in run.iterdir()) == [
        "ckpt_00000004.pt",
        "ckpt_00000005.pt",
        "classifier_best.pt",
        "logs",
        "test_results.json",
    ]
    best = torch.load(run / "classifier_best.pt", weights_only=True)
    assert best["arch"] == "cpu" and best["steps"] in (0, 3, 5) and best["classes"] == list(SC09_CLASSES)
    assert load_classifier(run / "classifier_best.pt").classes == SC09_CLASSES
    saved = json.loads((run / "test_results.json").read_text())
    assert saved == result and saved["n_test"] == 20 and saved["steps"] == 6
    confusion = torch.tensor(saved["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 20
    assert saved["test_accuracy"] == pytest.approx(confusion.diag().sum().item() / 20)
    out = capsys.readouterr().out
    assert "test accuracy" in out and "| true \\ predicted | zero | one |" in out
    events = EventAccumulator(str(run / "logs")).Reload()
    assert {"train/loss", "train/accuracy", "opt/lr", "valid/loss", "valid/accuracy", "test/accuracy"} <= set(
        events.Tags()["scalars"]
    )
    assert [e.step for e in events.Scalars("valid/accuracy")] == [0, 3, 5]


def test_sigterm_checkpoints_and_resume_is_exact(splits, tmp_path, monkeypatch):
    common = ["max_steps=7", "validation_interval=100", "checkpoint_interval=100", "test_csv=null"]
    train_classifier.main(classifier_args(splits, tmp_path / "straight", *common))
    augment, calls = train_classifier.augment, []

    def augment_then_signal(wav, cfg):  # SIGTERM arrives during step 2
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return augment(wav, cfg)

    monkeypatch.setattr(train_classifier, "augment", augment_then_signal)
    assert train_classifier.main(classifier_args(splits, tmp_path / "split", *common)) is None  # stopped
    assert sorted(p.name for p in (tmp_path / "split").glob("ckpt_*.pt")) == ["ckpt_00000002.pt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back
    monkeypatch.setattr(train_classifier, "augment", augment)
    train_classifier.main(
        classifier_args(
            splits, tmp_path / "split", *common, f"resume_checkpoint={tmp_path / 'split' / 'ckpt_00000002.pt'}"
        )
    )
    a, b = (ckpt.load(tmp_path / r / "ckpt_00000006.pt", train_classifier.RESUME_KEYS) for r in ("straight", "split"))
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["best"] == b["best"]
    assert a["optim_state_dict"]["state"][0]["step"] == b["optim_state_dict"]["state"][0]["step"]


def test_augment_shifts_scales_and_adds_noise():
    cfg = train_classifier.parse_config(
        ["train_csv=a", "valid_csv=b", "checkpoint_path=c", "noise_prob=0", "gain_range=[2,2]", "shift_s=0.001"]
    )
    wav = torch.zeros(3, 1000)
    wav[:, 500] = 1
    torch.manual_seed(0)
    out = train_classifier.augment(wav, cfg)
    peaks = out.argmax(1)
    assert torch.equal(out.amax(1), torch.full((3,), 2.0)) and ((peaks - 500).abs() <= 16).all()
    assert out.count_nonzero() == 3
    noisy = train_classifier.augment(
        wav,
        train_classifier.parse_config(  # white noise at 20 dB SNR
            [
                "train_csv=a",
                "valid_csv=b",
                "checkpoint_path=c",
                "noise_prob=1",
                "snr_db_range=[20,20]",
                "shift_s=0",
                "gain_range=[1,1]",
            ]
        ),
    )
    rms = wav.pow(2).mean(1).sqrt()
    assert (noisy - wav).std(1) == pytest.approx(0.1 * rms, rel=0.1)  # 1000 samples per clip: 10 %


def test_bad_settings_and_files_fail_before_any_work(splits, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="Unknown config key 'batch_sise'.*batch_size.*train_classifier.py --help"):
        train_classifier.main(classifier_args(splits, run, "batch_sise=4"))
    with pytest.raises(ConfigError, match="'checkpoint_path' is mandatory"):
        train_classifier.main([f"train_csv={splits / 'sc09-train.csv'}", f"valid_csv={splits / 'sc09-valid.csv'}"])
    with pytest.raises(ConfigError, match="arch=big"):
        train_classifier.main(classifier_args(splits, run, "arch=big"))
    with pytest.raises(RunError, match=f"resume_checkpoint={tmp_path / 'nope.pt'} does not exist"):
        train_classifier.main(classifier_args(splits, run, f"resume_checkpoint={tmp_path / 'nope.pt'}"))
    bad = tmp_path / "bad.csv"
    (tmp_path / "x.wav").write_text("not audio")
    bad.write_text(f"path,label\n{tmp_path / 'x.wav'},one\n")
    with pytest.raises(AudioError, match=r"x\.wav: not a readable audio file"):
        train_classifier.main(classifier_args(splits, run, f"train_csv={bad}"))
    assert not run.exists()


def test_a_finished_run_resumed_trains_and_writes_nothing(splits, tmp_path, capsys):
    """Resumed at or past its last step: 'already finished at step N' (its last checkpoint's step), and no
    checkpoint, log or test_results.json is written again; test results lost to a stop during the last step are
    scored then."""
    run = tmp_path / "run"
    train_classifier.main(classifier_args(splits, run, "max_steps=3", "validation_interval=100"))
    argv = partial(classifier_args, splits, run, "validation_interval=100")
    before = assert_finished_run_trains_nothing(train_classifier.main, argv, run, last_step=2, capsys=capsys)
    results = json.loads((run / "test_results.json").read_text())
    (run / "test_results.json").unlink()
    again = train_classifier.main(classifier_args(splits, run, "max_steps=3", "resume_checkpoint=auto"))
    assert again == json.loads((run / "test_results.json").read_text())
    assert again["train_seconds"] is None and again == dict(results, train_seconds=None)
    kept = [k for k in before if k.startswith(("ckpt_", "classifier_best"))]  # the checkpoints: not rewritten
    assert len(kept) == 2 and {k: files(run)[k] for k in kept} == {k: before[k] for k in kept}


def test_weights_that_go_nonfinite_stop_training_naming_the_step(splits, tmp_path, monkeypatch, capsys):
    """An update that leaves non-finite weights (what lr=inf did; now refused up front): one error line naming
    the step, status 2, and neither classifier_best.pt nor a checkpoint of those weights."""
    step, calls = torch.optim.AdamW.step, []

    def poisoning(self, *a, **k):
        out = step(self, *a, **k)
        calls.append(1)
        if len(calls) == 3:  # step 2
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning)
    run = tmp_path / "run"
    for interval, message, written in (  # caught by the checkpoint of step 2, or by the loss of step 3
        (1, "error: the weights are not finite after step 2 ", ["ckpt_00000001.pt"]),
        (100, "error: the training loss is nan at step 3: training stopped", []),
    ):
        calls.clear()
        argv = classifier_args(
            splits,
            run,
            "max_steps=6",
            f"checkpoint_interval={interval}",
            f"validation_interval={interval}",
            "overwrite=true",
        )
        with pytest.raises(SystemExit) as e:
            cli.run(train_classifier.main, argv)
        assert e.value.code == 2
        (line,) = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
        assert line.startswith(message), line
        assert sorted(p.name for p in run.glob("ckpt_*.pt")) == written
        for path in [run / "classifier_best.pt"] + [run / name for name in written]:
            state = torch.load(path, weights_only=True)["state_dict"]
            assert all(v.isfinite().all() for v in state.values()), path


@pytest.mark.parametrize(
    "override, message",
    [
        ("gain_range=[2,1]", r"^gain_range=\[2.0, 1.0\]: must be \[low, high\] with 0 < low <= high$"),
        ("lr=0", r"^lr=0.0: must be > 0$"),
        ("warmup_frac=2", r"^warmup_frac=2.0: must be in \[0, 1\]$"),
        # lr=inf used to train to a classifier_best.pt of non-finite weights (exit 0)
        ("lr=inf", r"^lr=inf: must be a finite number > 0$"),
        ("lr=nan", r"^lr=nan: must be a finite number > 0$"),
        ("snr_db_range=[10,inf]", r"^snr_db_range=\[10.0, inf\]: must be finite numbers: \[low, high\]"),
    ],
)
def test_values_out_of_range_fail_before_any_work(splits, tmp_path, override, message):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        train_classifier.main(classifier_args(splits, run, override))
    assert not run.exists()


def test_an_unwritable_folder_fails_before_any_work(splits, tmp_path, capsys):
    """A checkpoint folder that cannot be written (here a file where its parent should be: the tests run as root,
    whom read-only modes do not stop) is the one-line 'cannot write' error, not a raw OSError."""
    (tmp_path / "blocker").write_text("")
    with pytest.raises(SystemExit) as e:
        cli.run(train_classifier.main, classifier_args(splits, tmp_path / "blocker" / "run"))
    assert e.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert line.startswith(f"error: checkpoint_path={tmp_path / 'blocker' / 'run'}: cannot write (NotADirectoryError")
