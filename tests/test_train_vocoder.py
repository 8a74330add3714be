"""train_vocoder.py on a tiny digits corpus: outputs that load in generate.py and the hub entry, exact resume after
SIGTERM, a 2-process gloo run, the segment data, the discriminators and losses, vocoder scoring, errors."""

import os
import signal
import subprocess
import sys
from functools import partial

import pytest
import torch
from helpers import (
    ROOT,
    assert_finished_run_trains_nothing,
    assert_identical,
    assert_same_entries,
    files,
    make_checkpoint,
    make_tiny_digits,
    run_command_under_memory_limit,
    run_two_cpu_ranks,
    train_tiny_classifier,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from density.audio.signal import load_audio, log_mel
from density.config import ConfigError
from density.evaluation.vocoders import evaluate_vocoders, markdown
from density.features import extract as hubert_feature_reader
from density.inference import generate
from density.inference import hub as hubconf
from density.runtime import checkpoint as ckpt
from density.runtime.run import TrainingAborted
from density.vocoders import train as train_vocoder
from density.vocoders import training as vt
from density.vocoders.vocoder import HifiGAN, ISTFTVocoder, load_vocoder

TINY_HIFIGAN = [
    "vocoder=hifigan_mel_small",
    "vocoder_config.upsample_initial_channel=16",
    "vocoder_config.resblock_kernel_sizes=[3]",
    "vocoder_config.resblock_dilations=[[1]]",
]
TINY_ISTFT = [
    "vocoder=istft_mel",
    "vocoder_config.dim=16",
    "vocoder_config.intermediate_dim=32",
    "vocoder_config.num_layers=1",
]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return make_tiny_digits(tmp_path_factory.mktemp("digits"))


def args(splits, run, *extra, model=TINY_HIFIGAN):
    """80 training clips, the first 4 validation clips, 8-frame segments, discriminators at their smallest."""
    return [
        f"train_csv={splits / 'sc09-train.csv'}",
        f"valid_csv={splits / 'sc09-valid.csv'}",
        f"checkpoint_path={run}",
        *model,
        "d_width=0.0625",
        "segment_frames=8",
        "batch_size=4",
        "n_valid=4",
        "audio_samples=2",
        "num_threads=1",
        *extra,
    ]


def test_run_writes_checkpoints_and_vocoders_that_generate_and_the_hub_load(splits, tmp_path):
    run = tmp_path / "run"
    best = train_vocoder.main(
        args(
            splits,
            run,
            "max_steps=4",
            "adv_start_step=2",
            "checkpoint_interval=2",
            "validation_interval=2",
            "summary_interval=1",
        )
    )
    assert sorted(p.name for p in run.iterdir()) == [
        "ckpt_00000002.pt",
        "ckpt_00000003.pt",
        "logs",
        "vocoder.pt",
        "vocoder_best.pt",
    ]
    assert best["steps"] in (0, 2, 3) and best["mel_l1"] > 0
    state = ckpt.load(run / "ckpt_00000003.pt", train_vocoder.RESUME_KEYS)
    assert state["steps"] == 3 and state["vocoder"]["format"] == "hifigan" and len(state["rng_state"]) == 1
    saved = torch.load(run / "vocoder.pt", weights_only=True)
    assert saved["format"] == "hifigan" and saved["config"]["upsample_initial_channel"] == 16
    vocoder = load_vocoder(run / "vocoder.pt")
    assert isinstance(vocoder, HifiGAN) and vocoder.cfg.hop == 160
    events = EventAccumulator(str(run / "logs"), size_guidance={"audio": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert {
        "train/mel_l1",
        "train/d_loss",
        "train/g_adv",
        "train/feature_matching",
        "opt/lr",
        "valid/mel_l1",
        "valid/mr_stft",
    } <= set(tags["scalars"])
    assert [e.value for e in events.Scalars("train/d_loss")][:2] == [0.0, 0.0]  # log-mel loss alone at first
    assert events.Scalars("train/d_loss")[2].value > 0
    assert {"valid/generated_0", "valid/generated_1", "valid/real_0"} <= set(tags["audio"])
    assert "valid/log_mels" in tags["images"]

    make_checkpoint(tmp_path / "asgan_mel.pt", mel=True)  # a tiny mel ASGAN
    generate.main(
        [
            "--checkpoint",
            str(tmp_path / "asgan_mel.pt"),
            "--vocoder",
            str(run / "vocoder_best.pt"),
            "--out_dir",
            str(tmp_path / "samples"),
            "--n",
            "2",
            "--device",
            "cpu",
            "--no_progress",
        ]
    )
    assert len(list((tmp_path / "samples").glob("*.wav"))) == 2
    model = hubconf.asgan_from_checkpoint(
        str(tmp_path / "asgan_mel.pt"), vocoder=str(run / "vocoder.pt"), device="cpu", progress=False
    )
    assert isinstance(model.vocoder, HifiGAN) and model.unconditional_generate(2).shape == (2, 16000)


def test_istft_vocoder_from_the_feature_cache(splits, tmp_path):
    features = tmp_path / "features"
    for split in ("train", "valid"):
        hubert_feature_reader.main(
            ["--csv", str(splits / f"sc09-{split}.csv"), "--out", str(features), "--type", "melspec"]
        )
    run = tmp_path / "run"
    train_vocoder.main(
        args(splits, run, f"feature_root={features}", "max_steps=2", "adv_start_step=1", model=TINY_ISTFT)
    )
    saved = torch.load(run / "vocoder.pt", weights_only=True)
    assert saved["format"] == "istft" and saved["config"]["dim"] == 16
    assert isinstance(load_vocoder(run / "vocoder_best.pt"), ISTFTVocoder)


def test_sigterm_checkpoints_and_resume_is_exact(splits, tmp_path, monkeypatch):
    # 16-clip batches: 5 steps an epoch, so the runs cross an epoch (data order, crops, learning-rate decay)
    common = [
        "max_steps=7",
        "batch_size=16",
        "adv_start_step=1",
        "checkpoint_interval=100",
        "validation_interval=100",
        "lr_decay=0.5",
    ]
    train_vocoder.main(args(splits, tmp_path / "straight", *common))
    optimise, calls = train_vocoder.optimise, []

    def optimise_then_signal(trainable, loss, name, steps, grad_norms=None):  # SIGTERM arrives during step 2
        calls.append(name)
        if calls.count("G") == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return optimise(trainable, loss, name, steps, grad_norms)

    monkeypatch.setattr(train_vocoder, "optimise", optimise_then_signal)
    assert train_vocoder.main(args(splits, tmp_path / "split", *common)) is None  # stopped
    assert sorted(p.name for p in (tmp_path / "split").glob("ckpt_*.pt")) == ["ckpt_00000002.pt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(train_vocoder, "optimise", optimise)
    train_vocoder.main(args(splits, tmp_path / "split", *common, "resume_checkpoint=auto"))
    a, b = (ckpt.load(tmp_path / r / "ckpt_00000006.pt", train_vocoder.RESUME_KEYS) for r in ("straight", "split"))
    assert a["epoch"] == 1 and a["g_sched_state_dict"]["last_epoch"] == 1  # one decay, at the end of epoch 0
    # every resume entry but the best scores (the stopped run also validated at its stop) and the config
    assert_same_entries(a, b, [k for k in train_vocoder.RESUME_KEYS if k not in ("best", "cfg_yaml")])


RANK_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {root!r})
from density.vocoders import train as train_vocoder
built = []
build = train_vocoder.build_vocoder
train_vocoder.build_vocoder = lambda *a: built.append(build(*a)) or built[-1]
train_vocoder.main(sys.argv[2:])
state = {{k: v.detach() for k, v in built[0].state_dict().items()}}
torch.save(state, f"{{sys.argv[1]}}/rank{{os.environ['RANK']}}.pt")
"""


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
@pytest.mark.slow
def test_two_gloo_processes_train_one_model(splits, tmp_path, engine):
    run = tmp_path / "run"
    argv = args(splits, run, "max_steps=3", "adv_start_step=1", f"engine={engine}")
    rank0, rank1 = run_two_cpu_ranks(RANK_SCRIPT, tmp_path, argv, tmp_path)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    state = ckpt.load(run / "ckpt_00000002.pt", train_vocoder.RESUME_KEYS)
    assert len(state["rng_state"]) == 2 and state["steps"] == 2
    assert len(list((run / "logs").glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes


def test_segments_are_cut_at_the_same_place(splits):
    paths = [line.split(",")[0] for line in (splits / "sc09-train.csv").read_text().splitlines()[1:3]]
    clips = vt.VocoderClips(paths, data_type="melspec", hop=160, in_dim=128, segment_frames=10, seed=3)
    feats, wav = clips[1]
    whole = load_audio(paths[1])
    start = clips.start(1, whole.shape[0] // 160)
    assert feats.shape == (10, 128) and wav.shape == (1600,)
    assert torch.equal(wav, whole[start * 160 : (start + 10) * 160])
    assert torch.equal(feats, log_mel(whole).T[start : start + 10])
    assert torch.equal(clips[1][0], feats)  # the same crop again within an epoch ...
    starts = set()
    for epoch in range(6):
        clips.set_epoch(epoch)
        starts.add(clips.start(1, 100))
    assert len(starts) > 1  # ... and another one in other epochs
    assert vt.spaced(list(range(10)), 3) == [0, 3, 6] and vt.spaced([1, 2], 0) == vt.spaced([1, 2], 5) == [1, 2]
    padded = vt.VocoderClips(paths, data_type="melspec", hop=160, in_dim=128, segment_frames=120)
    feats, wav = padded[0]
    assert feats.shape == (120, 128) and wav.shape == (19200,) and (feats[100:] == vt.PAD_VALUE["melspec"]).all()


def test_discriminators_losses_and_distance():
    d = vt.Discriminators(width=0.0625)
    logits, fmaps = d(torch.randn(2, 1, 1000))
    assert len(logits) == len(fmaps) == 8 and all(x.shape[0] == 2 for x in logits)
    ones, zeros = [torch.ones(2, 3)], [torch.zeros(2, 3)]
    assert vt.discriminator_loss(ones, zeros) == 0 and vt.generator_adv_loss(ones) == 0
    assert vt.discriminator_loss(zeros, ones) == 2 and vt.generator_adv_loss(zeros) == 1
    assert vt.feature_matching_loss([[torch.ones(3)]], [[torch.zeros(3)]]) == 1
    wav = torch.randn(2, 16000) * 0.1
    assert vt.mr_stft_distance(wav, wav)["mr_stft"].abs().max() == 0 and vt.log_mel_l1(wav, wav) == 0
    noisy = vt.mr_stft_distance(wav + 0.05 * torch.randn(2, 16000), wav)
    assert (noisy["mr_stft"] > 0).all() and (noisy["sc"] < 1).all()


def test_vocoder_scoring_rows(splits, tmp_path):
    classifier = train_tiny_classifier(splits, tmp_path / "classifier", steps=4)
    run = tmp_path / "run"
    train_vocoder.main(args(splits, run, "max_steps=2", "adv_start_step=2"))
    rows = evaluate_vocoders(
        splits / "sc09-test.csv", classifier, [("tiny", run / "vocoder.pt")], n=8, griffin_lim_iters=2
    )
    assert [r["name"] for r in rows] == ["real clips", "Griffin-Lim (2 it.)", "tiny"]
    assert all(r["n"] == 8 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert rows[2]["steps"] == 2 and rows[2]["train_minutes"] > 0 and rows[1]["mr_stft"] > 0
    assert "| tiny | 8 |" in markdown(rows)


def test_bad_settings_fail_before_any_work(splits, tmp_path):
    run = tmp_path / "run"
    for extra, message in (
        (["segment_frames=0"], "segment_frames=0: must be >= 1"),
        (["vocoder=nope"], "vocoder=nope: choose one of"),
        (["vocoder_config.widht=3"], "vocoder_config: .*widht"),
        (["d_width=0"], "d_width=0.0: must be in"),
        (["batch_sise=4"], "Unknown config key 'batch_sise'.*train_vocoder.py --help"),
        (["vocoder=hifigan_hubert"], "set feature_root"),
        (["batch_size=100"], "80 training clips give no full batch"),
    ):
        with pytest.raises(ConfigError, match=message):
            train_vocoder.main(args(splits, run, *extra))
    assert not run.exists()
    done = subprocess.run(
        [sys.executable, "train_vocoder.py", *args(splits, run, "lr=0")], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == ["error: lr=0.0: must be > 0"]


def test_a_finished_run_resumed_trains_and_writes_nothing(splits, tmp_path, capsys):
    """Resumed at max_steps (its last checkpoint carries step max_steps - 1) or past it: 'already finished', and
    neither a checkpoint, nor vocoder.pt, nor a log is written again; a vocoder.pt lost to a kill after the last
    checkpoint is written from it."""
    run = tmp_path / "run"
    train_vocoder.main(args(splits, run, "max_steps=2", "adv_start_step=1"))
    assert sorted(p.name for p in run.glob("ckpt_*.pt")) == ["ckpt_00000001.pt"]
    argv = partial(args, splits, run, "adv_start_step=1")
    before = assert_finished_run_trains_nothing(train_vocoder.main, argv, run, last_step=1, capsys=capsys)
    (run / "vocoder.pt").unlink()
    train_vocoder.main(args(splits, run, "max_steps=2", "resume_checkpoint=auto", "adv_start_step=1"))
    g = ckpt.load(run / "ckpt_00000001.pt", train_vocoder.RESUME_KEYS)["g_state_dict"]
    assert_identical(dict(torch.load(run / "vocoder.pt", weights_only=True)["state_dict"]), g, "vocoder.pt")
    assert files(run).keys() == before.keys()


def test_weights_that_go_nonfinite_stop_training_naming_the_step(splits, tmp_path, monkeypatch):
    """A generator update that leaves non-finite weights (a huge lr's effect; inf is refused up front): the next
    validation stops the run with an error naming the step; vocoder_best.pt and the checkpoints stay finite."""
    optimise = train_vocoder.optimise

    def poisoning(trainable, loss, name, steps, grad_norms=None):
        norm = optimise(trainable, loss, name, steps, grad_norms)
        if name == "G" and steps == 2:
            with torch.no_grad():
                next(trainable.module.parameters()).fill_(float("nan"))
        return norm

    monkeypatch.setattr(train_vocoder, "optimise", poisoning)
    run = tmp_path / "run"
    with pytest.raises(TrainingAborted, match="weights are not finite after step 2 .*ckpt_00000001"):
        train_vocoder.main(args(splits, run, "max_steps=4", "checkpoint_interval=1", "validation_interval=1"))
    assert sorted(p.name for p in run.glob("*.pt")) == ["ckpt_00000001.pt", "vocoder_best.pt"]
    for state in (
        torch.load(run / "vocoder_best.pt", weights_only=True)["state_dict"],
        ckpt.load(run / "ckpt_00000001.pt", train_vocoder.RESUME_KEYS)["g_state_dict"],
    ):
        assert all(v.isfinite().all() for v in state.values())


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_values_are_refused_before_any_work(splits, tmp_path, value):
    run = tmp_path / "run"
    for key in ("lr", "mel_weight", "grad_clip"):
        with pytest.raises(ConfigError, match=rf"^{key}={value}: must be a finite number "):
            train_vocoder.main(args(splits, run, f"{key}={value}"))
    assert not run.exists()


@pytest.mark.slow
def test_segments_longer_than_the_clips_are_refused_before_any_work(splits, tmp_path):
    """segment_frames=100000 (clips: 100 frames) used to grow to 24 GB: run as the command under a memory limit and
    a timeout, so that a regression fails the test and not the machine."""
    run = tmp_path / "run"
    done = run_command_under_memory_limit(
        ["train_vocoder.py", *args(splits, run, "segment_frames=100000", "max_steps=1")], timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()  # the clip check's progress bar, then the error
    assert "Traceback" not in done.stderr and [x for x in lines if "error" in x] == lines[-1:]
    line = lines[-1]
    assert line.startswith("error: segment_frames=100000: must be in [1, 100]: the longest training clip (")
    assert line.endswith("has 100 frames of 160 samples (a 1-s clip has 100)") and not run.exists()
    train_vocoder.main(args(splits, run, "segment_frames=100", "max_steps=1", "batch_size=2", "n_valid=1"))
    assert (run / "ckpt_00000000.pt").exists()  # as long as a clip: allowed
