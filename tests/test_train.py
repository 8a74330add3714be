"""train_asgan.py on the CPU with a tiny model and tiny data made here: outputs, schedule, exact resume, faults."""

import copy
import io
import itertools
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import soundfile as sf
import torch
from helpers import (
    ASGAN_RESUMED_KEYS,
    assert_finished_run_trains_nothing,
    assert_identical,
    assert_same_entries,
    files,
    make_data,
    tiny_args,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from density.audio.signal import HOP, log_mel
from density.augment import P_MIN, Augmenter
from density.config import ConfigError, config_from_yaml, parse_config
from density.dataset import DatasetError, build_datasets
from density.features.hubert import HubertFeatureReader
from density.gan import train as train_asgan
from density.gan import training, validation
from density.metrics import fad, feature_statistics
from density.models import Discriminator, Generator
from density.runtime import checkpoint as ckpt
from density.runtime.engine import _free_port, make_engine
from density.runtime.run import RunError, TrainingAborted
from density.vocoders.vocoder import GriffinLimVocoder, HifiGAN, HifiGANConfig, save_vocoder

ROOT = Path(__file__).resolve().parents[1]
TINY_HUBERT = ROOT / "tests" / "fixtures" / "hubert_fairseq" / "tiny_hubert_fairseq.pt"  # 48-d, 7 blocks
REFERENCE_KEYS = {
    "g_state_dict",
    "d_state_dict",
    "g_optim_state_dict",
    "d_optim_state_dict",
    "g_ema_state_dict",
    "g_scaler_state_dict",
    "d_scaler_state_dict",
    "steps",
    "epoch",
    "cfg_yaml",
}
QUIET = [
    "validation_interval=1000",
    "checkpoint_interval=1000",
    "summary_interval=1000",
    "stdout_interval=1000",
    "grad_summary_interval=1000",
]
# Tensorboard tags the reference logged (memory/max_*_gb are written on CUDA only).
TRAIN_SCALARS = {
    "memory/sec_per_batch",
    "training/g_loss_smooth",
    "training/d_loss_smooth",
    "opt/g_lr",
    "opt/g_W_lr",
    "opt/d_lr",
    "opt/g_grad_norm",
    "opt/d_grad_norm",
    "training/mean_drift",
    "training/var_drift",
    "training/dist_loss",
    "training/r1_loss",
    "training/total_d_loss",
    "opt/d_update_perc",
    "training/D(G(z))",
    "training/D(c)",
    "data/ada_p",
    "data/r_t",
}
VALID_SCALARS = {
    "validation/g_loss",
    "validation/d_loss",
    "validation/fad",
    "validation/approx_kl_div",
    "validation/fake_closest_to_real_perc",
    "validation/real_closest_to_fake_perc",
}
VALID_HISTOGRAMS = {
    "validation/c_fake_nearest_dists",
    "validation/c_real_nearest_dists",
    "validation/D(G(z))",
    "validation/D(c)",
}
STDOUT_LINE = re.compile(
    r"^Steps: (\d+), g_loss: -?\d+\.\d{3}, d_loss: -?\d+\.\d{3}, dmetric: 0\.000, "
    r"s/b: \d+\.\d{3}, mem: \d+\.\d{2} GB$",
    re.M,
)


def make_mel_data(folder, n=32, seed=0):
    """n (frames, 128) log-mel files of 20..40 frames: log-mels of fading noise bursts."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for k in range(n):
        samples = HOP * int(torch.randint(20, 41, (1,), generator=g))
        wav = 0.1 * torch.randn(samples, generator=g) * torch.linspace(1, 0, samples)
        torch.save(log_mel(wav).T.contiguous(), folder / f"{k:03d}.pt")
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """The 2-core test machine is shared: one intra-op thread is several times faster for these tiny models.
    train_asgan.main flushes subnormals to zero for the whole process: undo it for the tests that follow."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    torch.set_flush_denormal(False)


def periodic(folder):
    return sorted(p.name for p in Path(folder).glob("ckpt_0*.pt"))


def poisoned(fn, bad_call, nan_outputs=(0,)):
    """fn, with the outputs at positions `nan_outputs` (a loss: position 0) made NaN on the calls where
    bad_call(call number, from 1) is true."""
    calls = []

    def wrapped(*args):
        calls.append(1)
        out = fn(*args)
        if not bad_call(len(calls)):
            return out
        if isinstance(out, torch.Tensor):
            return out * math.nan
        return tuple(o * math.nan if k in nan_outputs else o for k, o in enumerate(out))

    return wrapped


def test_few_steps_write_events_checkpoints_and_best_fad(tmp_path, capsys):
    out = tmp_path / "run"
    train_asgan.main(
        tiny_args(
            tmp_path,
            "run",
            "max_steps=9",
            "checkpoint_interval=3",
            "validation_interval=4",
            "summary_interval=2",
            "stdout_interval=3",
            "grad_summary_interval=6",
            "keep_last_checkpoints=2",
        )
    )
    assert periodic(out) == ["ckpt_00000006.pt", "ckpt_00000008.pt"]  # 3 pruned; 8 is the final checkpoint
    assert [int(n) for n in STDOUT_LINE.findall(capsys.readouterr().out)] == [6]  # multiples of 3 after step 5
    state = ckpt.load(out / "ckpt_00000008.pt")
    assert REFERENCE_KEYS | {"train_state", "ada_state", "rng_state"} <= set(state)
    assert state["steps"] == 8 and state["epoch"] == 2
    assert (state["g_scaler_state_dict"] is None) == (not torch.cuda.is_available())  # fp16 GradScaler on GPUs only
    cfg = config_from_yaml(state["cfg_yaml"])
    assert cfg.max_steps == 9 and cfg.rp_w_cfg.seq_len == 8
    Generator(cfg.rp_w_cfg).load_state_dict(state["g_ema_state_dict"])
    assert len(state["g_optim_state_dict"]["param_groups"]) == 2
    best = ckpt.load(out / "ckpt_best_fad.pt")
    assert "g_ema_state_dict" in best and best["steps"] in (4, 8)
    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == TRAIN_SCALARS | VALID_SCALARS
    assert [e.step for e in events.Scalars("opt/g_lr")] == [6, 8]  # summary_interval=2, after step 5
    assert [e.step for e in events.Scalars("validation/fad")] == [4, 8]
    assert set(tags["histograms"]) == VALID_HISTOGRAMS
    assert set(tags["images"]) == {"opt/grad_norms", "validation/c_val_hist"}
    assert {"config/text_summary"} <= set(tags["tensors"])
    for name in ("c_fake_nearest_dist", "c_real_nearest_dist"):  # add_scalars: one run folder per curve
        assert list((out / "logs" / f"validation_min_cosim_dists_{name}").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("equalized_lr", [True, False])
def test_optimiser_groups_and_learning_rates(tmp_path, equalized_lr):
    """Reference note 28: G group 0 = ff, preconv, layers, head; group 1 = W at lr (eq-lr) or lr*w_lr_mult;
    D at lr*d_lr_mult."""
    cfg = parse_config(
        tiny_args(
            tmp_path,
            "run",
            f"rp_w_cfg.equalized_lr={equalized_lr}",
            "lr=0.01",
            "rp_w_cfg.w_lr_mult=0.5",
            "d_lr_mult=0.1",
            "betas=[0.1,0.9]",
        )
    )
    g, d = Generator(cfg.rp_w_cfg), Discriminator.from_config(cfg)
    g_opt, d_opt = training.build_optimizers(cfg, g, d)
    main, mapping = g_opt.param_groups
    named = list(g.named_parameters())
    assert [id(p) for p in main["params"]] == [id(p) for n, p in named if not n.startswith("W.")]
    assert [id(p) for p in mapping["params"]] == [id(p) for n, p in named if n.startswith("W.")]
    assert [id(p) for p in d_opt.param_groups[0]["params"]] == [id(p) for p in d.parameters()]
    assert (main["lr"], mapping["lr"], d_opt.param_groups[0]["lr"]) == (0.01, 0.01 if equalized_lr else 0.005, 0.001)
    for group in (main, mapping, d_opt.param_groups[0]):
        assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.1, 0.9), 1e-8, 0)


def test_lr_final_mult_decays_g_and_d_rates_by_cosine_to_max_steps(tmp_path):
    """lr_final_mult: every optimiser group follows base lr x (f + (1 - f)(1 + cos(pi step / max_steps)) / 2); the
    step-11 checkpoint holds the rates that step used, and the tensorboard opt/*_lr scalars follow the schedule."""
    args = tiny_args(
        tmp_path,
        "run",
        "lr=0.01",
        "d_lr_mult=0.5",
        "lr_final_mult=0.1",
        "max_steps=12",
        "summary_interval=1",
        "checkpoint_interval=1000",
    )
    train_asgan.main(args)
    mult = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 11 / 12))
    state = ckpt.load(tmp_path / "run" / "ckpt_00000011.pt")
    assert [g["lr"] for g in state["g_optim_state_dict"]["param_groups"]] == pytest.approx([0.01 * mult] * 2)
    assert state["d_optim_state_dict"]["param_groups"][0]["lr"] == pytest.approx(0.005 * mult)
    events = EventAccumulator(str(tmp_path / "run" / "logs"))
    events.Reload()
    g_lr = {e.step: e.value for e in events.Scalars("opt/g_lr")}
    assert g_lr and all(
        v == pytest.approx(0.01 * training.lr_multiplier(parse_config(args), s), rel=1e-6) for s, v in g_lr.items()
    )
    assert g_lr[max(g_lr)] < 0.5 * g_lr[min(g_lr)]
    with pytest.raises(ConfigError, match="set max_steps"):
        train_asgan.main(tiny_args(tmp_path, "other", "lr_final_mult=0.1"))
    assert training.lr_multiplier(parse_config(tiny_args(tmp_path, "x", "max_steps=5")), 3) == 1.0


@pytest.mark.parametrize(
    "extra, d_phases, d_updates, r1_steps",
    [
        # ADA p = 1: every batch is drawn for skipping, but a D phase on a multiple of 16 steps is kept
        (["aug_init_p=1.0", "max_steps=34"], [0, 16, 32], [0, 16, 32], [16, 32]),
        # p = 0, update_ratio 3: D D D G G G ...; D updates only where the batch index within the epoch
        # (4 batches per epoch) is a multiple of 3: steps 0, 7 (i=3), 8 (i=0)
        (["aug_init_p=0.0", "update_ratio=3", "max_steps=12"], [0, 1, 2, 6, 7, 8], [0, 7, 8], [8]),
        (
            ["aug_init_p=0.0", "update_ratio=3", "max_steps=12", "d_loss_update_max_threshold=-1"],
            [0, 1, 2, 6, 7, 8],
            [0, 1, 2, 6, 7, 8],
            [8],
        ),  # L_D above the max threshold forces the update
        (
            ["aug_init_p=0.0", "update_ratio=3", "max_steps=12", "d_loss_update_min_threshold=100"],
            [0, 1, 2, 6, 7, 8],
            [],
            [8],
        ),  # L_D at or below the min threshold never updates
    ],
)
def test_phase_schedule_skipping_update_ratio_and_r1_cadence(
    tmp_path, monkeypatch, extra, d_phases, d_updates, r1_steps
):
    """Reference notes 29, 30: the D/G phase per step, which D phases update D, and which carry R1 (every 4th step)."""
    phases, r1, updates = [], [], []
    d_forward, g_forward, optimise = training.d_forward, training.g_forward, training.optimise

    def record_d(*args):
        phases.append("D")
        if args[-1]:
            r1.append(len(phases) - 1)
        return d_forward(*args)

    def record_g(*args):
        phases.append("G")
        return g_forward(*args)

    def record_update(trainable, loss, name, steps, grad_norms=None):
        updates.append((name, steps))
        return optimise(trainable, loss, name, steps, grad_norms)

    monkeypatch.setattr(training, "d_forward", record_d)
    monkeypatch.setattr(training, "g_forward", record_g)
    monkeypatch.setattr(training, "optimise", record_update)
    train_asgan.main(tiny_args(tmp_path, "run", "rp_w_cfg.apply_r1_every=4", *QUIET, *extra))
    assert [s for s, ph in enumerate(phases) if ph == "D"] == d_phases
    assert r1 == r1_steps
    assert [s for name, s in updates if name == "D"] == d_updates
    assert [s for name, s in updates if name == "G"] == [s for s, ph in enumerate(phases) if ph == "G"]


def test_ema_generator_moves_at_checkpoint_intervals_only(tmp_path):
    """Reference note 32 (default ema_every=0): at steps 3 and 6, p_ema += 0.1 (p - p_ema); buffers copied from G."""
    args = tiny_args(tmp_path, "run", "max_steps=7", "checkpoint_interval=3", *QUIET[:1])
    train_asgan.main(args)
    cfg = parse_config(args)
    torch.manual_seed(cfg.seed)  # the run builds G first after seeding: its initial weights = the initial EMA
    ema = Generator(cfg.rp_w_cfg).state_dict()
    for step in (3, 6):
        state = ckpt.load(tmp_path / "run" / f"ckpt_{step:08d}.pt")
        g, g_ema = state["g_state_dict"], state["g_ema_state_dict"]
        params = {n for n, _ in Generator(cfg.rp_w_cfg).named_parameters()}
        for name, value in g_ema.items():
            if name not in params:
                assert torch.equal(value, g[name]), f"step {step}: buffer {name}"
                continue
            want = ema[name].double() + 0.1 * (g[name].double() - ema[name].double())
            ulp = torch.finfo(torch.float32).eps * torch.maximum(ema[name].abs(), g[name].abs()).double()
            ulps = ((value.double() - want).abs() / ulp.clamp_min(1e-30)).max()
            assert ulps <= 2, f"step {step}: {name} is {ulps:.1f} float32 ulps off"  # one update more: ~1e3 ulps
        ema = g_ema


@pytest.mark.parametrize("engine_name", ["torch", "deepspeed"])
def test_fp16_loss_scaling_with_r1_matches_fp32(tmp_path, monkeypatch, engine_name):
    """The GPU fp16 path, forced on the CPU (autocast fp16, GradScaler from 512): a D step with R1 reports fp32's
    D loss, R1 and unscaled pre-clip gradient norm to fp16 accuracy."""
    for key, value in dict(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
    ).items():
        monkeypatch.setenv(key, value)  # DeepSpeed's one-process group, undone after the test
    cfg = parse_config(tiny_args(tmp_path, "run", f"engine={engine_name}", "fp16=False"))
    torch.manual_seed(0)
    g, d = Generator(cfg.rp_w_cfg), Discriminator.from_config(cfg)
    real, z = 0.3 * torch.randn(4, 8, 6), torch.randn(4, 8)
    results = {}
    for precision in ("fp32", "fp16"):
        engine = make_engine(cfg)
        engine.precision = precision  # a CPU engine picks fp32; this is what it picks on a GPU with fp16=True
        if engine_name == "deepspeed":
            engine.ds_config["torch_autocast"] = {"enabled": precision == "fp16", "dtype": "float16"}
        g_copy, d_copy = copy.deepcopy(g), copy.deepcopy(d)
        G, D = (engine.wrap(m, o) for m, o in zip((g_copy, d_copy), training.build_optimizers(cfg, g_copy, d_copy)))
        D.zero_grad()
        loss, r1, _, _ = training.d_forward(cfg, engine, G, D, Augmenter(0.05, P_MIN), real.clone(), z, True)
        D.backward(loss + r1)
        results[precision] = loss.item(), r1.item(), D.step(), D.scaler and D.scaler.get_scale()
        engine.close()
    (loss32, r1_32, norm32, scale32), (loss16, r1_16, norm16, scale16) = results["fp32"], results["fp16"]
    assert scale32 is None and scale16 == 512  # a finite step neither backs off nor grows yet
    assert loss16 != loss32, "fp16 autocast did not run"
    assert (loss16, r1_16, norm16) == pytest.approx((loss32, r1_32, norm32), rel=1e-2)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.slow
def test_resume_is_exact(tmp_path, num_workers):
    """2N steps straight == N steps, stop, resume, N more: parameters, optimiser states, ADA, EMA, RNG."""
    common = [
        f"num_workers={num_workers}",
        "ema_every=3",
        "validation_interval=7",
        "checkpoint_interval=1000",
        "summary_interval=1000",
        "stdout_interval=1000",
        "grad_summary_interval=1000",
    ]
    train_asgan.main(tiny_args(tmp_path, "straight", "max_steps=22", *common))
    train_asgan.main(tiny_args(tmp_path, "split", "max_steps=11", *common))
    resume = f"resume_checkpoint={tmp_path}/split/ckpt_00000010.pt"
    train_asgan.main(tiny_args(tmp_path, "split", "max_steps=22", resume, *common))
    a, b = ckpt.load(tmp_path / "straight" / "ckpt_00000021.pt"), ckpt.load(tmp_path / "split" / "ckpt_00000021.pt")
    assert a["ada_state"]["p"] != 0.3, "ADA p never adapted: the test would not cover it"
    assert_same_entries(a, b, ASGAN_RESUMED_KEYS)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_zero(tmp_path):
    """SIGTERM to the whole process group, DataLoader workers included (as SLURM or `kill -- -PGID` send it)."""
    out, stderr = tmp_path / "run", tmp_path / "stderr.txt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = tiny_args(
        tmp_path,
        "run",
        "max_steps=100000",
        "stdout_interval=1",
        "checkpoint_interval=100000",
        "validation_interval=100000",
        "summary_interval=100000",
        "grad_summary_interval=100000",
        "num_workers=2",
    )
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "train_asgan.py"), *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    try:
        for line in proc.stdout:
            if line.startswith("Steps: 8,"):
                os.killpg(proc.pid, signal.SIGTERM)
                break
        proc.stdout.read()
        assert proc.wait(timeout=60) == 0, stderr.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (name,) = periodic(out)
    state = ckpt.load(out / name)
    assert state["steps"] >= 8 and name == f"ckpt_{state['steps']:08d}.pt"
    train_asgan.main(
        tiny_args(tmp_path, "run", f"max_steps={state['steps'] + 3}", f"resume_checkpoint={out / name}", *QUIET)
    )
    assert periodic(out)[-1] == f"ckpt_{state['steps'] + 2:08d}.pt"


LEAKED_ITERATORS = """
import sys
import torch.utils.data as tud
from density.gan import train as train_asgan
kept = []  # every DataLoader iterator stays referenced to interpreter exit, as a reference cycle can keep it
make_iter = tud.DataLoader.__iter__
tud.DataLoader.__iter__ = lambda self: kept.append(make_iter(self)) or kept[-1]
train_asgan.main(sys.argv[1:])
print('main returned', flush=True)
"""


@pytest.mark.slow
def test_exit_cannot_hang_on_a_live_dataloader_worker(tmp_path):
    """Issue 10 case 7: a worker that ignores SIGTERM is still waiting for work when training ends (mid-epoch),
    and its iterator is still referenced; multiprocessing's exit handler used to SIGTERM and join it forever."""
    args = tiny_args(tmp_path, "run", "max_steps=3", "num_workers=1", *QUIET)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", LEAKED_ITERATORS, *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert any(line.startswith("main returned") for line in proc.stdout), "training failed"
        returned = time.monotonic()
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - returned < 5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert periodic(tmp_path / "run") == ["ckpt_00000002.pt"]


def test_reference_checkpoint_without_resume_state_still_resumes(tmp_path, caplog):
    train_asgan.main(tiny_args(tmp_path, "run", "max_steps=3", *QUIET))
    state = ckpt.load(tmp_path / "run" / "ckpt_00000002.pt")
    ckpt.save({k: v for k, v in state.items() if k in REFERENCE_KEYS}, tmp_path / "reference.pt")
    with caplog.at_level(logging.WARNING, logger="train_asgan"):  # into a new folder: 'run' is another run's
        train_asgan.main(
            tiny_args(tmp_path, "resumed", "max_steps=6", f"resume_checkpoint={tmp_path}/reference.pt", *QUIET)
        )
    assert "has no resume state" in caplog.text
    assert ckpt.load(tmp_path / "resumed" / "ckpt_00000005.pt")["steps"] == 5


def test_mistyped_resume_or_new_run_never_touches_a_run_and_auto_continues_it(tmp_path):
    """Issue 10 case 1: a missing resume_checkpoint and a new run into a used folder are refused with every file
    kept; resume_checkpoint=auto (a requeued job) continues from the newest checkpoint, as the same run."""
    out = tmp_path / "run"
    train_asgan.main(
        tiny_args(
            tmp_path, "run", "max_steps=4", "checkpoint_interval=1", "validation_interval=2", "keep_last_checkpoints=2"
        )
    )
    before = {p.name: p.read_bytes() for p in out.glob("ckpt_*.pt")}
    assert sorted(before) == ["ckpt_00000002.pt", "ckpt_00000003.pt", "ckpt_best_fad.pt"]
    for extra, message in (
        (f"resume_checkpoint={tmp_path}/ckpt_00000003.pt", "does not exist"),
        ("max_steps=8", "already holds checkpoints"),
    ):
        with pytest.raises(RunError, match=message):
            train_asgan.main(tiny_args(tmp_path, "run", "keep_last_checkpoints=2", extra))
        assert {p.name: p.read_bytes() for p in out.glob("ckpt_*.pt")} == before
    train_asgan.main(
        tiny_args(
            tmp_path,
            "run",
            "max_steps=6",
            "resume_checkpoint=auto",
            "checkpoint_interval=1",
            "validation_interval=2",
            "keep_last_checkpoints=2",
        )
    )
    assert periodic(out) == ["ckpt_00000004.pt", "ckpt_00000005.pt"]
    run_ids = {ckpt.load(p)["run_id"] for p in out.glob("ckpt_*.pt")} | {ckpt.load(out / "ckpt_best_fad.pt")["run_id"]}
    assert len(run_ids) == 1


def test_a_bad_feature_file_mid_run_is_named_after_a_checkpoint(tmp_path):
    """Issue 10 case 5: a NaN feature file met by a DataLoader worker mid-run stops training with a one-line error
    naming the file, after writing a checkpoint of the steps done; with the file fixed, auto resumes from it."""
    data = make_data(tmp_path / "data")
    torch.save(torch.full((7, 6), math.nan), data / "008.pt")  # in the 4th training batch of epoch 0
    args = tiny_args(tmp_path, "run", "num_workers=1", *QUIET)
    with pytest.raises(DatasetError) as e:
        train_asgan.main(args)
    message = str(e.value)
    assert "\n" not in message and f"{data / '008.pt'}: holds NaN or infinite values" in message
    (name,) = periodic(tmp_path / "run")
    assert name == "ckpt_00000002.pt" and f"checkpoint written: {tmp_path / 'run' / name}" in message
    make_data(tmp_path / "data")  # the file fixed
    train_asgan.main(tiny_args(tmp_path, "run", "resume_checkpoint=auto", "max_steps=12", *QUIET))
    assert periodic(tmp_path / "run")[-1] == "ckpt_00000011.pt"


def test_injected_nan_losses_are_skipped_and_logged(tmp_path, caplog, monkeypatch):
    """A NaN G loss and a NaN D(real) (so a NaN D loss) once each: both updates skipped with a warning, training
    goes on, and the NaN does not enter the ADA statistics."""
    monkeypatch.setattr(training, "generator_loss", poisoned(training.generator_loss, lambda n: n == 2))
    monkeypatch.setattr(training, "d_forward", poisoned(training.d_forward, lambda n: n == 2, (0, 2)))
    with caplog.at_level(logging.WARNING, logger="train_asgan"):
        train_asgan.main(tiny_args(tmp_path, "run", "max_steps=8", *QUIET))
    for what in ("G loss (nan); G update skipped", "D loss (nan); D update skipped"):
        assert len([r for r in caplog.records if f"non-finite {what}" in r.message]) == 1, what
    state = ckpt.load(tmp_path / "run" / "ckpt_00000007.pt")
    for key in ("g_state_dict", "d_state_dict", "g_ema_state_dict"):
        assert all(v.isfinite().all() for v in state[key].values()), key
    assert all(math.isfinite(v) for v in state["ada_state"].values()), state["ada_state"]


def test_consecutive_nonfinite_steps_abort_naming_step_and_checkpoint(tmp_path, monkeypatch):
    """Losses NaN from step 4 on; checkpoints every step, keeping 1: the streak's checkpoints do not prune
    ckpt 3, the last one written before it, which the abort message names."""
    losses = itertools.count()  # one loss per step, G or D
    for name in ("generator_loss", "discriminator_loss"):
        monkeypatch.setattr(training, name, poisoned(getattr(training, name), lambda _: next(losses) >= 4))
    args = tiny_args(
        tmp_path,
        "run",
        "max_nonfinite_steps=3",
        "checkpoint_interval=1",
        "keep_last_checkpoints=1",
        "validation_interval=1000",
    )
    message = r"3 consecutive non-finite steps up to step 6.*ckpt_00000003\.pt"
    with pytest.raises(TrainingAborted, match=message):
        train_asgan.main(args)
    assert ckpt.load(tmp_path / "run" / "ckpt_00000003.pt")["steps"] == 3


def test_mistyped_override_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        train_asgan.main(tiny_args(tmp_path, "run", "bacth_size=4"))
    with pytest.raises(ConfigError, match="model=rp_w"):
        train_asgan.main([a for a in tiny_args(tmp_path, "run") if a != "model=rp_w"])
    assert not (tmp_path / "run").exists()


def test_bad_value_fails_before_any_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"'betas' is \[0.5, 0.9, 0.1\]"):
        train_asgan.main(tiny_args(tmp_path, "run", "betas=[0.5,0.9,0.1]"))
    assert not (tmp_path / "run").exists()


def test_grad_clip_zero_disables_clipping(tmp_path):
    """Issue 10 case 3: grad_clip=0 steps with the full gradient (torch used to zero it), as DeepSpeed does."""
    engine = make_engine(parse_config(tiny_args(tmp_path, "run", "grad_clip=0", "fp16=False")))
    torch.manual_seed(0)
    model, x = torch.nn.Linear(3, 2), torch.randn(4, 3)
    ref = copy.deepcopy(model)
    start = copy.deepcopy(model.state_dict())
    trainable = engine.wrap(model, torch.optim.Adam(model.parameters(), lr=0.1))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.1)
    trainable.zero_grad()
    trainable.backward(100 * trainable(x).square().sum())
    norm = trainable.step()
    (100 * ref(x).square().sum()).backward()
    assert norm == pytest.approx(torch.cat([p.grad.flatten() for p in ref.parameters()]).norm().item()) and norm > 1
    ref_opt.step()
    for name, value in model.state_dict().items():
        assert not torch.equal(value, start[name]) and torch.equal(value, ref.state_dict()[name]), name


@pytest.mark.parametrize("kind", ["truncated", "foreign", "pickled code", "no optimiser state", "other model"])
def test_bad_resume_checkpoint_is_a_clear_error(tmp_path, kind):
    bad = tmp_path / "bad.pt"
    weights = {"g_state_dict": {"w": torch.zeros(3)}, "d_state_dict": {}, "steps": 5, "epoch": 0, "cfg_yaml": ""}
    if kind == "truncated":
        torch.save({"g_state_dict": {"w": torch.zeros(5000)}}, bad)
        bad.write_bytes(bad.read_bytes()[:3000])
    elif kind == "foreign":
        torch.save({"model": {"w": torch.zeros(3)}}, bad)
    elif kind == "pickled code":
        torch.save({"g_state_dict": Path("x")}, bad)
    elif kind == "no optimiser state":
        torch.save(weights, bad)
    else:
        torch.save({**weights, "g_optim_state_dict": {}, "d_optim_state_dict": {}}, bad)
    with pytest.raises(ckpt.CheckpointError, match=str(bad)):
        train_asgan.main(tiny_args(tmp_path, "run", f"resume_checkpoint={bad}"))
    assert not (tmp_path / "run").exists()


def test_melspec_fad_on_vocoded_hubert_features(tmp_path, monkeypatch):
    """Reference note 33, fad_hubert_checkpoint set: the FAD compares HuBERT layer-6 features of the Griffin-Lim-vocoded
    generated mels with those of the vocoded validation mels front-padded with -11.4, recomputed here independently
    from the mels G generated during validation (eval mode)."""
    generated, forward = [], Generator.forward

    def record(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if not self.training:
            generated.append(out.detach().clone())
        return out

    monkeypatch.setattr(Generator, "forward", record)
    args = tiny_args(
        tmp_path,
        "run",
        f"train_root={make_mel_data(tmp_path / 'mel')}",
        "data_type=melspec",
        "n_valid=16",
        "c_dim=128",
        "rp_w_cfg.c_dim=128",
        "rp_w_cfg.head_spec=[128,1]",
        "rp_w_cfg.seq_len=16",
        "rp_w_cfg.layer_specs=[[16,3,4],[16,3,4],[12,3,8],[8,3,16]]",
        *QUIET,
        "max_steps=3",
        "validation_interval=2",
        f"fad_hubert_checkpoint={TINY_HUBERT}",
        "audio_samples=0",
    )
    train_asgan.main(args)
    events = EventAccumulator(str(tmp_path / "run" / "logs"))
    events.Reload()
    (logged,) = [(e.step, e.value) for e in events.Scalars("validation/fad")]

    cfg = parse_config(args)
    _, valid_ds = build_datasets(cfg)
    reader, vocoder = HubertFeatureReader(str(TINY_HUBERT), layer=6), GriffinLimVocoder()
    items = [valid_ds.load(i) for i in range(len(valid_ds))]
    n = max(len(x) for x in items)
    assert n > min(len(x) for x in items), "equal lengths: the padding would go untested"
    real = torch.stack([torch.cat([torch.full((n - len(x), 128), -11.4), x]) for x in items])  # one chunk of <= 32
    assert [tuple(f.shape) for f in generated] == [(4, 16, 128)] * 4  # the 4 validation batches at step 2
    with torch.no_grad():
        real_feats = reader.get_feats_batched(vocoder(real).squeeze(1)).flatten(0, 1)
        fake_feats = torch.cat(
            [reader.get_feats_batched(vocoder(f).squeeze(1)).flatten(0, 1) for f in generated]
        )  # batch by batch: Griffin-Lim's start phases depend on B
    assert real_feats.shape == (16 * reader.num_frames(n * HOP), 48) and fake_feats.shape == (16 * 8, 48)
    want = fad(fake_feats, *feature_statistics(real_feats))
    assert math.isfinite(want) and logged == (2, pytest.approx(want, rel=1e-4))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["fad_hubert_checkpoint=h.pt"], "hubert_L6 features are already HuBERT"),
        (["data_type=wav", "fad_vocoder=v.pt"], "fad_vocoder is for data_type melspec or hubert_L6"),
        (["fad_vocoder=missing.pt"], "fad_vocoder=missing.pt: "),
        (["data_type=melspec", "fad_hubert_checkpoint=missing.pt"], "fad_hubert_checkpoint=missing.pt: .*not found"),
    ],
)
def test_fad_options_outside_their_route_fail_clearly(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        train_asgan.main(tiny_args(tmp_path, "run", *extra))
    assert not (tmp_path / "run").exists()


def test_normalize_features_round_trip_through_checkpoint_and_inference(tmp_path):
    """normalize_features=true: statistics of the training split in the checkpoint's `feature_norm` (not in the G
    state dict), D trained on standardised features, and the inference wrapper de-normalising before the vocoder."""
    from density.dataset import FeatureNorm
    from density.inference.asgan import load_asgan

    data = make_mel_data(tmp_path / "mels")
    args = [
        "model=rp_w",
        "preset=mel",
        f"train_root={data}",
        f"checkpoint_path={tmp_path / 'run'}",
        "n_valid=8",
        "batch_size=4",
        "num_workers=0",
        "device=cpu",
        "z_dim=8",
        "rp_w_cfg.z_dim=8",
        "rp_w_cfg.w_dim=8",
        "rp_w_cfg.ff_channels=16",
        "rp_w_cfg.seq_len=16",
        "rp_w_cfg.D_head_dim=8",
        "rp_w_cfg.D_block_repeats=[1,1]",
        "rp_w_cfg.layer_specs=[[16,3,4],[8,3,8],[8,3,16]]",
        "normalize_features=true",
        "max_steps=3",
        *QUIET,
    ]
    train_asgan.main(args)
    state = torch.load(tmp_path / "run" / "ckpt_00000002.pt", weights_only=True)
    train, _ = build_datasets(parse_config(args))
    frames = torch.cat([train.load(i) for i in range(len(train))]).double()
    norm = state["feature_norm"]
    torch.testing.assert_close(norm["mean"], frames.mean(0).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm["std"], frames.std(0, unbiased=False).clamp_min(0.1).float(), rtol=1e-4, atol=1e-5)
    assert not any("feature_norm" in k or k in ("mean", "std") for k in state["g_ema_state_dict"])
    fn = FeatureNorm.from_checkpoint(state)
    x = torch.randn(2, 16, 128)
    torch.testing.assert_close(fn.denormalize(fn.normalize(x)), x, rtol=1e-5, atol=1e-5)
    assert not FeatureNorm.from_checkpoint({}).enabled

    class Capture(torch.nn.Module):  # a vocoder that records its input
        def forward(self, c):
            self.seen = c
            return torch.zeros(c.shape[0], 1, 16000)

    model = load_asgan(tmp_path / "run" / "ckpt_00000002.pt", vocoder=Capture(), device="cpu")
    z = torch.randn(3, 8)
    model.generate_from_latent(z)
    with torch.no_grad():
        raw = model.g(z, 16)
    torch.testing.assert_close(model.vocoder.seen, raw * norm["std"] + norm["mean"])


def test_checkpoint_schema_and_checkpoints_without_format_version(tmp_path):
    """Every key is in the documented list (density/checkpoint.py KEYS); a checkpoint of this layout written before
    format_version existed still resumes exactly where it stopped and loads in the hub entry; a newer version is
    refused by both."""
    from density.inference.asgan import load_asgan

    train_asgan.main(tiny_args(tmp_path, "run", "max_steps=3", *QUIET))
    state = ckpt.load(tmp_path / "run" / "ckpt_00000002.pt")
    assert state["format_version"] == ckpt.FORMAT_VERSION and set(state) == set(ckpt.KEYS)
    ckpt.save({k: v for k, v in state.items() if k != "format_version"}, tmp_path / "unversioned.pt")
    train_asgan.main(
        tiny_args(tmp_path, "resumed", "max_steps=6", f"resume_checkpoint={tmp_path}/unversioned.pt", *QUIET)
    )
    train_asgan.main(tiny_args(tmp_path, "run", "max_steps=6", "resume_checkpoint=auto", *QUIET))
    a, b = ckpt.load(tmp_path / "run" / "ckpt_00000005.pt"), ckpt.load(tmp_path / "resumed" / "ckpt_00000005.pt")
    for key in ("g_state_dict", "d_state_dict", "g_optim_state_dict", "train_state", "ada_state", "rng_state"):
        assert_identical(a[key], b[key], key)
    assert load_asgan(tmp_path / "unversioned.pt", vocoder=torch.nn.Identity(), device="cpu").z_dim == 8
    ckpt.save({**state, "format_version": ckpt.FORMAT_VERSION + 1}, tmp_path / "newer.pt")
    with pytest.raises(ckpt.CheckpointError, match="format_version 2; this code reads versions up to 1"):
        train_asgan.main(tiny_args(tmp_path, "newer", f"resume_checkpoint={tmp_path}/newer.pt", *QUIET))
    with pytest.raises(ValueError, match="format_version 2"):
        load_asgan(tmp_path / "newer.pt", vocoder=torch.nn.Identity(), device="cpu")


def test_logged_d_loss_includes_r1(tmp_path, monkeypatch):
    """As in the reference, the D loss printed and smoothed is L_D + R1; L_D alone is kept as d_loss_no_r1."""
    d_stats, d_step = [], training.d_step
    monkeypatch.setattr(training, "d_step", lambda *a, **k: d_stats.append(d_step(*a, **k)) or d_stats[-1])
    train_asgan.main(tiny_args(tmp_path, "run", "max_steps=9", "aug_init_p=0", *QUIET))
    with_r1 = [s for s in d_stats if s["r1"] > 0]
    assert with_r1 and all(s["d_loss"] == pytest.approx(s["d_loss_no_r1"] + s["r1"].item()) for s in d_stats)
    assert all(s["d_loss"] != s["d_loss_no_r1"] for s in with_r1)
    latest = ckpt.load(tmp_path / "run" / "ckpt_00000008.pt")["train_state"]["latest"]
    assert latest["d_loss"] == d_stats[-1]["d_loss"] and latest["r1"] == d_stats[-1]["r1"].item()


def started_loop(monkeypatch):
    """Make train_asgan.main build everything and stop before the first step -> the list that receives the Loop."""
    loops = []
    monkeypatch.setattr(train_asgan, "train", lambda loop, *_: loops.append(loop))
    return loops


def test_init_checkpoint_fine_tunes_as_a_new_run_from_the_loaded_weights(tmp_path, monkeypatch):
    train_asgan.main(tiny_args(tmp_path, "source", "max_steps=3", *QUIET))
    source = ckpt.load(tmp_path / "source" / "ckpt_00000002.pt")
    loops = started_loop(monkeypatch)
    train_asgan.main(tiny_args(tmp_path, "tuned", f"init_checkpoint={tmp_path}/source/ckpt_00000002.pt", *QUIET))
    loop = loops[0]
    assert loop.state.steps == 0 and loop.state.epoch == 0
    for module, key in (
        (loop.G.module, "g_state_dict"),
        (loop.D.module, "d_state_dict"),
        (loop.g_ema, "g_ema_state_dict"),
    ):
        assert_identical(ckpt.cpu_state(module), source[key], key)
    assert not loop.G.optimizer.state and not loop.D.optimizer.state  # fresh Adam moments
    assert loop.harness.run.run_id != source["run_id"]
    monkeypatch.undo()
    train_asgan.main(
        tiny_args(
            tmp_path,
            "tuned2",
            f"init_checkpoint={tmp_path}/source/ckpt_00000002.pt",
            "init_parts=[G]",
            "max_steps=2",
            *QUIET,
        )
    )
    tuned = ckpt.load(tmp_path / "tuned2" / "ckpt_00000001.pt")
    assert tuned["steps"] == 1 and tuned["run_id"] != source["run_id"]
    slim = tmp_path / "slim.pt"  # weights-only, like the official hub checkpoint: cfg_yaml and the EMA G
    ckpt.save({"cfg_yaml": source["cfg_yaml"], "g_ema_state_dict": source["g_ema_state_dict"]}, slim)
    with pytest.raises(ckpt.CheckpointError, match="holds no d_state_dict for init_parts D"):
        train_asgan.main(tiny_args(tmp_path, "tuned3", f"init_checkpoint={slim}", *QUIET))
    loops = started_loop(monkeypatch)
    train_asgan.main(tiny_args(tmp_path, "tuned4", f"init_checkpoint={slim}", "init_parts=[G,G_ema]", *QUIET))
    for module in (loops[0].G.module, loops[0].g_ema):
        assert_identical(ckpt.cpu_state(module), source["g_ema_state_dict"], "G from the EMA G")


def test_init_checkpoint_with_another_head_is_refused_or_skipped_with_init_strict_false(tmp_path, monkeypatch, caplog):
    """A new c_dim: the generator's head and the discriminator's input differ; strict refuses, false skips them."""
    train_asgan.main(tiny_args(tmp_path, "source", "max_steps=1", *QUIET))
    source = ckpt.load(tmp_path / "source" / "ckpt_00000000.pt")
    init = f"init_checkpoint={tmp_path}/source/ckpt_00000000.pt"
    other = tmp_path / "other"
    make_data(other, c_dim=5)
    new_head = [f"train_root={other}", "c_dim=5", "rp_w_cfg.c_dim=5", "rp_w_cfg.head_spec=[5,1]"]
    with pytest.raises(ckpt.CheckpointError, match="init_strict=false"):
        train_asgan.main(tiny_args(tmp_path, "strict", init, *new_head, *QUIET))
    loops = started_loop(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="train_asgan"):
        train_asgan.main(tiny_args(tmp_path, "loose", init, "init_strict=false", *new_head, *QUIET))
    g = ckpt.cpu_state(loops[0].G.module)
    skipped = [k for k in source["g_state_dict"] if k in g and g[k].shape != source["g_state_dict"][k].shape]
    assert skipped and all(f"{k}: shape" in caplog.text for k in skipped)
    kept = [k for k in g if k not in skipped]
    assert_identical({k: g[k] for k in kept}, {k: source["g_state_dict"][k] for k in kept}, "kept G weights")


def test_validation_writes_audio_of_the_same_z_griffin_lim_for_mels_and_skips_hubert_without_vocoder(tmp_path, caplog):
    mel = [
        f"train_root={make_mel_data(tmp_path / 'mel')}",
        "data_type=melspec",
        "n_valid=8",
        "c_dim=128",
        "rp_w_cfg.c_dim=128",
        "rp_w_cfg.head_spec=[128,1]",
        "rp_w_cfg.seq_len=16",
        "rp_w_cfg.layer_specs=[[16,3,4],[16,3,4],[12,3,8],[8,3,16]]",
        *QUIET,
        "max_steps=5",
        "validation_interval=2",
        "checkpoint_interval=2",
        "audio_samples=3",
    ]
    args = tiny_args(tmp_path, "mel_run", *mel)
    train_asgan.main(args)
    events = EventAccumulator(str(tmp_path / "mel_run" / "logs"), size_guidance={"audio": 0})
    events.Reload()
    assert sorted(events.Tags()["audio"]) == ["audio/sample_0", "audio/sample_1", "audio/sample_2"]
    logged = {e.step: sf.read(io.BytesIO(e.encoded_audio_string))[0] for e in events.Audio("audio/sample_1")}
    assert sorted(logged) == [2, 4]
    cfg = parse_config(args)
    g = Generator(cfg.rp_w_cfg).eval()
    for step in (2, 4):  # the training G of that step, on the fixed z, through Griffin-Lim
        g.load_state_dict(ckpt.load(tmp_path / "mel_run" / f"ckpt_{step:08d}.pt")["g_state_dict"])
        with torch.no_grad():
            want = GriffinLimVocoder()(g(validation.sample_latents(cfg)))[1, 0].clamp(-1, 1)
        assert logged[step] == pytest.approx(want.numpy(), abs=2 / 32767)
    with caplog.at_level(logging.INFO, logger="train_asgan"):
        train_asgan.main(tiny_args(tmp_path, "hubert_run", *QUIET, "max_steps=3", "validation_interval=2"))
    assert caplog.text.count("no audio in tensorboard for hubert_L6") == 1
    events = EventAccumulator(str(tmp_path / "hubert_run" / "logs"))
    events.Reload()
    assert events.Tags()["audio"] == [] and [e.step for e in events.Scalars("validation/fad")] == [2]
    vocoder = tmp_path / "hifigan.pt"  # a HiFi-GAN for the 6-d test features: hubert_L6 samples get audio
    save_vocoder(HifiGAN(HifiGANConfig(6, [10, 8, 2, 2], [20, 16, 4, 4], upsample_initial_channel=16)), vocoder)
    with pytest.raises(ConfigError, match="takes 6-d frames, the model makes c_dim=5"):
        train_asgan.main(
            tiny_args(
                tmp_path,
                "wrong_run",
                *QUIET,
                f"fad_vocoder={vocoder}",
                "c_dim=5",
                "rp_w_cfg.c_dim=5",
                "rp_w_cfg.head_spec=[5,1]",
            )
        )
    train_asgan.main(
        tiny_args(
            tmp_path,
            "vocoded_run",
            *QUIET,
            "max_steps=3",
            "validation_interval=2",
            f"fad_vocoder={vocoder}",
            "audio_samples=2",
        )
    )
    events = EventAccumulator(str(tmp_path / "vocoded_run" / "logs"), size_guidance={"audio": 0})
    events.Reload()
    assert sorted(events.Tags()["audio"]) == ["audio/sample_0", "audio/sample_1"]
    (sample,) = events.Audio("audio/sample_0")
    assert sample.step == 2 and len(sf.read(io.BytesIO(sample.encoded_audio_string))[0]) == 8 * 320


def test_a_finished_run_resumed_at_or_past_its_end_trains_and_writes_nothing(tmp_path, capsys):
    """A run that reached max_steps (its last checkpoint carries step max_steps - 1), or its last epoch, and is
    resumed (auto, or the file) with the same or a lower limit: 'already finished at step N', no checkpoint, no
    log. A mean-w cache file next to the checkpoints, numbered higher, is not taken for one."""
    out = tmp_path / "run"
    train_asgan.main(tiny_args(tmp_path, "run", "max_steps=4", *QUIET))
    assert periodic(out) == ["ckpt_00000003.pt"]
    (out / "ckpt_00000009.pt.w_avg-0123456789abcdef-n100.pt").write_bytes((out / "ckpt_00000003.pt").read_bytes())
    argv = partial(tiny_args, tmp_path, "run", *QUIET)
    assert_finished_run_trains_nothing(train_asgan.main, argv, out, last_step=3, capsys=capsys)
    train_asgan.main(tiny_args(tmp_path, "epochs", "n_epochs=1", *QUIET))  # 4 batches of 4: steps 0-3
    before = files(tmp_path / "epochs")
    train_asgan.main(tiny_args(tmp_path, "epochs", "n_epochs=1", "resume_checkpoint=auto", *QUIET))
    assert "already finished at step 3 (n_epochs=1)" in capsys.readouterr().out
    assert files(tmp_path / "epochs") == before


@pytest.mark.parametrize("validation_interval", [1, 1000])
def test_weights_that_go_nonfinite_stop_training_naming_the_step_with_no_checkpoint_of_them(
    tmp_path, monkeypatch, validation_interval
):
    """An update that leaves non-finite weights (as a huge lr would; inf itself is refused up front) stops the run
    at its next validation or checkpoint with an error naming the step; no checkpoint holds non-finite weights."""
    optimise = training.optimise

    def poisoning(trainable, loss, name, steps, grad_norms=None):
        norm = optimise(trainable, loss, name, steps, grad_norms)
        if steps == 2:
            with torch.no_grad():
                next(trainable.module.parameters()).fill_(math.inf)
        return norm

    monkeypatch.setattr(training, "optimise", poisoning)
    args = tiny_args(
        tmp_path, "run", "max_steps=8", "checkpoint_interval=1", f"validation_interval={validation_interval}"
    )
    with pytest.raises(TrainingAborted, match=r"weights are not finite after step 2 \([gd][._].*ckpt_00000001"):
        train_asgan.main(args)
    assert periodic(tmp_path / "run") == ["ckpt_00000001.pt"]
    for path in (tmp_path / "run").glob("ckpt_*.pt"):
        state = ckpt.load(path)
        for key in ("g_state_dict", "d_state_dict", "g_ema_state_dict"):
            assert all(v.isfinite().all() for v in state[key].values()), (path, key)
    with pytest.raises(ConfigError, match=r"'lr' is inf; it must be a finite number > 0"):
        train_asgan.main(tiny_args(tmp_path, "inf", "lr=inf"))
    assert not (tmp_path / "inf").exists()
