"""Shared test helpers: tiny ASGAN configs, checkpoints and HiFi-GANs, a tiny digits corpus with its splits and a
briefly trained classifier, tiny training data and arguments, nested-state and checkpoint comparison, the check
that a finished run resumed trains nothing, commands under a memory limit, two CPU ranks under torchrun, and the
published classifier format.

Tiny checkpoints: a freshly initialised generator's output is ~1e-9 (the un-normalised resampling filters shrink the
signal at every layer, reference note 14), so each layer's `norm_ema` is calibrated to the power of its input
(`Generator.calibrate_norm_ema`), which is what training's running mean converges to. The tiny HiFi-GAN has zero
biases and a calibrated output gain, so that its waveform depends on its input instead of being dominated by them.

The published resnext.pth is a whole pickled model; offline there is no published file, so `published_like` builds
one with the same structure (the original training code's classes, pickled from a module named `models.resnext` —
see the `original_resnext_module` fixture in conftest.py —, wrapped in DataParallel, saved whole with torch.save).
"""

import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from density.config import config_to_yaml, parse_config
from density.data import splits as split_data
from density.data.digits import make_digits_corpus
from density.evaluation import train_classifier
from density.models import Generator
from density.runtime import checkpoint as ckpt
from density.vocoders.vocoder import HifiGAN, HifiGANConfig

ROOT = Path(__file__).resolve().parents[1]
FEATURE_DIM = 12  # c_dim of the tiny HuBERT-like model
TINY_SPECS = [[32, 3, 2.0]] * 5 + [[24, 3, 4.0]] * 4 + [[16, 3, 8.0]] * 3 + [[16, 3, 16.0]] * 2
MEMORY_LIMIT = 3 * 2**30  # bytes of address space for a command that must fail before any work


def tiny_overrides(mel=False, c_dim=None):
    """The key=value overrides of a tiny generator: z, w and ff 16 wide, 16 frames, TINY_SPECS layers, c_dim
    features (default: 128 log-mels with the mel preset, else FEATURE_DIM)."""
    c = c_dim or (128 if mel else FEATURE_DIM)
    return [
        "model=rp_w",
        "z_dim=16",
        f"c_dim={c}",
        "rp_w_cfg.z_dim=16",
        "rp_w_cfg.w_dim=16",
        f"rp_w_cfg.c_dim={c}",
        "rp_w_cfg.ff_channels=16",
        "rp_w_cfg.seq_len=16",
        f"rp_w_cfg.head_spec=[{c},1]",
        "rp_w_cfg.layer_specs=" + str(TINY_SPECS).replace(" ", ""),
        *(["preset=mel"] if mel else []),
    ]


def tiny_cfg(mel=False, c_dim=None):
    return parse_config(tiny_overrides(mel, c_dim))


def make_checkpoint(path, mel=False, ema=True):
    """Save cfg_yaml + g_ema_state_dict (or only g_state_dict, like the reference's ckpt_best_fad.pt) -> G."""
    torch.manual_seed(1)
    cfg = tiny_cfg(mel)
    g = Generator(cfg.rp_w_cfg).eval()
    g.calibrate_norm_ema(torch.randn(64, g.z_dim))
    key = "g_ema_state_dict" if ema else "g_state_dict"
    torch.save({"cfg_yaml": config_to_yaml(cfg), key: g.state_dict(), "steps": 10}, path)
    return g


def tiny_vocoder():
    """A 16-channel HiFi-GAN for FEATURE_DIM features (hop 320), weight norm still on, output std ~0.2."""
    torch.manual_seed(2)
    v = HifiGAN(HifiGANConfig(FEATURE_DIM, [10, 8, 2, 2], [20, 16, 4, 4], upsample_initial_channel=16)).eval()
    with torch.no_grad():
        for name, p in v.named_parameters():
            if name.endswith("bias"):
                p.zero_()
        y = v(torch.randn(4, 16, FEATURE_DIM))
        v.conv_post.parametrizations.weight.original0.mul_(0.2 / y.std())
    return v


def make_tiny_digits(folder):
    """12 voices x 10 words (120 clips; 80 train, 20 valid, 20 test by voice variant) -> folder of sc09-*.csv."""
    make_digits_corpus(folder / "digits", n_speakers=12, per_word=1, valid_frac=0.2, test_frac=0.2, progress=False)
    splits = folder / "splits"
    split_data.main(["--root_path", str(folder / "digits"), "--sc09_only", "true", "--out_dir", str(splits)])
    return splits


def scoring_args(splits, classifier):
    """The classifier and the real training and test splits that evaluate.py and diagnose.py ceiling score with."""
    return [
        "--classifier",
        str(classifier),
        "--train_csv",
        str(splits / "sc09-train.csv"),
        "--test_csv",
        str(splits / "sc09-test.csv"),
    ]


def classifier_args(splits, run, *extra):
    return [
        f"train_csv={splits / 'sc09-train.csv'}",
        f"valid_csv={splits / 'sc09-valid.csv'}",
        f"test_csv={splits / 'sc09-test.csv'}",
        f"checkpoint_path={run}",
        "batch_size=16",
        *extra,
    ]


def train_tiny_classifier(splits, run, steps=40):
    """A CPU classifier trained for `steps` steps -> path of its classifier_best.pt."""
    train_classifier.main(classifier_args(splits, run, f"max_steps={steps}", "validation_interval=20"))
    return run / train_classifier.BEST


def make_data(folder, n=24, c_dim=6, seed=0):
    """n feature files of 5..11 frames (some shorter, some longer than seq_len 8)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for k in range(n):
        frames = int(torch.randint(5, 12, (1,), generator=g))
        torch.save(0.3 * torch.randn(frames, c_dim, generator=g), folder / f"{k:03d}.pt")
    return folder


def tiny_args(tmp_path, run="run", *extra):
    """A tiny model (G ~4k, D ~2k parameters), 16 training items = 4 batches of 4, 8 validation items."""
    data = tmp_path / "data"
    if not data.is_dir():
        make_data(data)
    return [
        "model=rp_w",
        f"train_root={data}",
        f"checkpoint_path={tmp_path / run}",
        "n_valid=8",
        "batch_size=4",
        "num_workers=0",
        "c_dim=6",
        "z_dim=8",
        "rp_w_cfg.z_dim=8",
        "rp_w_cfg.w_dim=8",
        "rp_w_cfg.c_dim=6",
        "rp_w_cfg.ff_channels=16",
        "rp_w_cfg.seq_len=8",
        "rp_w_cfg.D_head_dim=8",
        "rp_w_cfg.head_spec=[6,1]",
        "rp_w_cfg.D_block_repeats=[2,2]",
        "rp_w_cfg.layer_specs=[[16,3,2],[16,3,2],[12,3,4],[8,3,8]]",
        "rp_w_cfg.apply_r1_every=2",
        "lr=2e-3",
        "aug_init_p=0.3",
        *extra,
    ]


def files(folder):
    """{relative path: bytes} of every file under a folder (checkpoints, logs)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def assert_finished_run_trains_nothing(main, argv, run, *, last_step, capsys):
    """A run in folder `run` that ended at max_steps (its last checkpoint: step last_step), resumed at its end
    (resume_checkpoint=auto) and past it (that checkpoint with a lower max_steps): `main(argv(*overrides))`
    returns None, prints 'already finished at step N (max_steps=M)' and writes nothing."""
    before = files(run)
    capsys.readouterr()
    for extra in (
        [f"max_steps={last_step + 1}", "resume_checkpoint=auto"],
        [f"max_steps={last_step}", f"resume_checkpoint={run / f'ckpt_{last_step:08d}.pt'}"],
    ):
        assert main(argv(*extra)) is None
        assert f"already finished at step {last_step} ({extra[0]}): nothing to train" in capsys.readouterr().out
        assert files(run) == before
    return before


# The entries of an ASGAN training checkpoint that a resumed run reproduces bit for bit: all but the config and
# the run id, which name the run.
ASGAN_RESUMED_KEYS = tuple(k for k in ckpt.KEYS if k not in ("cfg_yaml", "run_id"))


def assert_same_entries(a, b, keys):
    """Checkpoints a and b hold bit-for-bit equal entries under each of keys."""
    for key in keys:
        assert_identical(a[key], b[key], key)


def assert_identical(a, b, where):
    """Nested dicts/lists/tuples of tensors and plain values are bit-for-bit equal."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{k}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def limit_memory():
    """preexec_fn: cap the child's address space (a runaway allocation fails there, not on the machine)."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_command_under_memory_limit(argv, *, timeout):
    """`python argv...` in the repository root under MEMORY_LIMIT, a timeout and OMP_NUM_THREADS=1, for a command
    that must fail before any work; a regression then fails the test, not the machine -> CompletedProcess."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit_memory,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def run_two_cpu_ranks(rank_script, out, argv, cwd):
    """Write the Python source rank_script ({root}: the repository root) to cwd/rank.py and run it there in 2
    processes under torchrun (--standalone, gloo on the CPU, OMP_NUM_THREADS=1) with the arguments out, *argv; it
    must succeed -> [what rank 0 saved as out/rank0.pt, rank 1's out/rank1.pt]."""
    out.mkdir(parents=True, exist_ok=True)
    script = cwd / "rank.py"
    script.write_text(rank_script.format(root=str(ROOT)))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
        + [str(out), *argv],
        cwd=cwd,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


class ResNeXtBottleneck(nn.Module):
    """The original training code's block (pytorch-speech-commands models/resnext.py), restated."""

    def __init__(self, in_channels, out_channels, stride, cardinality, base_width, widen_factor):
        super().__init__()
        D = cardinality * int(base_width * out_channels / (widen_factor * 64.0))
        self.conv_reduce = nn.Conv2d(in_channels, D, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn_reduce = nn.BatchNorm2d(D)
        self.conv_conv = nn.Conv2d(D, D, kernel_size=3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(D)
        self.conv_expand = nn.Conv2d(D, out_channels, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if in_channels != out_channels:
            self.shortcut.add_module(
                "shortcut_conv",
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, padding=0, bias=False),
            )
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out_channels))

    def forward(self, x):
        b = F.relu(self.bn_reduce(self.conv_reduce(x)), inplace=True)
        b = F.relu(self.bn(self.conv_conv(b)), inplace=True)
        b = self.bn_expand(self.conv_expand(b))
        return F.relu(self.shortcut(x) + b, inplace=True)


class CifarResNeXt(nn.Module):
    """The original classifier (64-channel stem, stages 64w/128w/256w, 8x8 average pool), restated."""

    def __init__(self, nlabels, cardinality=8, depth=29, base_width=64, widen_factor=4, in_channels=3):
        super().__init__()
        self.cardinality, self.depth, self.block_depth = cardinality, depth, (depth - 2) // 9
        self.base_width, self.widen_factor, self.nlabels, self.output_size = base_width, widen_factor, nlabels, 64
        self.stages = [64, 64 * widen_factor, 128 * widen_factor, 256 * widen_factor]
        self.conv_1_3x3 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        self.stage_1 = self.block("stage_1", self.stages[0], self.stages[1], 1)
        self.stage_2 = self.block("stage_2", self.stages[1], self.stages[2], 2)
        self.stage_3 = self.block("stage_3", self.stages[2], self.stages[3], 2)
        self.classifier = nn.Linear(self.stages[3], nlabels)

    def block(self, name, in_channels, out_channels, pool_stride=2):
        block = nn.Sequential()
        for i in range(self.block_depth):
            block.add_module(
                f"{name}_bottleneck_{i}",
                ResNeXtBottleneck(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    pool_stride if i == 0 else 1,
                    self.cardinality,
                    self.base_width,
                    self.widen_factor,
                ),
            )
        return block

    def forward(self, x):
        x = F.relu(self.bn_1(self.conv_1_3x3(x)), inplace=True)
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        x = F.avg_pool2d(x, 8, 1).view(-1, self.stages[3])
        return self.classifier(x)


def published_like(path, legacy):
    """Save DataParallel(CifarResNeXt) whole (small widths, random BN statistics) -> the model in eval mode."""
    torch.manual_seed(0)
    model = CifarResNeXt(nlabels=10, cardinality=2, base_width=4, widen_factor=1, in_channels=1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 1.5)
    wrapped = nn.DataParallel(model)
    torch.save(wrapped, path, _use_new_zipfile_serialization=not legacy)
    return model.eval()
