"""Config schema, dotted overrides, presets, checkpoint YAML and clear errors."""

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from density.config import (
    ConfigError,
    RPWConfig,
    TrainConfig,
    config_from_yaml,
    config_to_yaml,
    hubert_layer_specs,
    mel_layer_specs,
    parse_config,
)
from density.models import Generator

README_COMMAND = (
    "model=rp_w n_valid=400 data_type=hubert_L6 z_dim=512 rp_w_cfg.z_dim=512 rp_w_cfg.w_layers=1 batch_size=16 "
    "lr=2e-3 grad_clip=10 aug_init_p=0.2 n_epochs=800 c_dim=768 rp_w_cfg.c_dim=768 d_lr_mult=0.1 fp16=True "
    "num_workers=12 betas=[0,0.99] rp_w_cfg.equalized_lr=True rp_w_cfg.use_sg3_ff=True rp_w_cfg.D_kernel_size=5 "
    "rp_w_cfg.D_block_repeats=[3,3,3,3] use_sc09_splits=True sc09_train_csv=./splits/train.csv "
    "sc09_valid_csv=./splits/valid.csv rp_w_cfg.r1_gamma=0.1"
).split()


def test_defaults_match_reference_schema():
    cfg = parse_config([])
    assert cfg.lr == 6e-5 and list(cfg.betas) == [0.8, 0.99] and cfg.model == "rv_w"
    assert cfg.distributed.dist_backend == "nccl" and cfg.grad_summary_interval == 500
    assert cfg.rp_w_cfg.layer_specs == hubert_layer_specs(48)
    assert [s[2] for s in cfg.rp_w_cfg.layer_specs] == [6.0] * 5 + [12.0] * 4 + [24.0] * 3 + [48] * 2
    assert OmegaConf.is_missing(cfg, "train_root") and OmegaConf.is_missing(cfg, "checkpoint_path")
    # The schema is plain dataclasses with factories (the reference's mutable default failed on 3.11+).
    assert all(
        f.default is dataclasses.MISSING
        for f in dataclasses.fields(TrainConfig)
        if f.name in ("distributed", "rp_w_cfg", "betas")
    )


def test_readme_command_overrides():
    cfg = parse_config(README_COMMAND)
    assert cfg.model == "rp_w" and cfg.rp_w_cfg.w_layers == 1 and list(cfg.betas) == [0.0, 0.99]
    assert cfg.rp_w_cfg.use_sg3_ff and cfg.rp_w_cfg.D_kernel_size == 5 and cfg.rp_w_cfg.r1_gamma == 0.1
    assert cfg.rp_w_cfg.layer_specs == hubert_layer_specs(48)


@pytest.mark.parametrize(
    "arg,message",
    [
        ("batch_sise=3", "Unknown config key 'batch_sise'.*batch_size"),
        ("rp_w_cfg.seqlen=32", "Unknown config key 'rp_w_cfg.seqlen'.*rp_w_cfg.seq_len"),
        ("batch_size=many", "'batch_size'"),
        ("engine=horovod", "'engine'.*torch.*deepspeed"),
        ("lr", "not of the form key=value"),
        ("preset=opera", "preset"),
    ],
)
def test_bad_overrides_are_clear_errors(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_config([arg])


@pytest.mark.parametrize(
    "arg, message",
    [
        ("lr=-1", "'lr' is -1.0; it must be > 0"),
        ("betas=[0.5,0.9,0.1]", r"'betas' is \[0.5, 0.9, 0.1\]; it must be two numbers in \[0, 1\)"),
        ("betas=[1]", "'betas' is"),
        ("betas=[0.5,1.0]", "'betas' is"),
        ("grad_clip=-1", "'grad_clip' is -1.0; it must be >= 0 \\(0 disables clipping\\)"),
        ("rp_w_cfg.layer_specs=[[16,3]]", r"'rp_w_cfg.layer_specs' is \[\[16, 3\]\]; it must be a non-empty list of "),
        ("rp_w_cfg.layer_specs=[[16,3,2],[16,3,6]]", "lengths that stay or double"),
        ("rp_w_cfg.seq_len=0", "'rp_w_cfg.seq_len' is 0; it must be >= 1"),
        ("num_workers=-1", "'num_workers' is -1; it must be >= 0"),
        ("n_epochs=0", "'n_epochs' is 0; it must be >= 1"),
        ("rp_w_cfg.r1_gamma=-1", "'rp_w_cfg.r1_gamma' is -1.0; it must be >= 0"),
        ("aug_init_p=5", r"'aug_init_p' is 5.0; it must be in \[0, 1\]"),
        ("lr=nan", "'lr' is nan"),
        ("seed=-1", "'seed' is -1"),
        ("rp_w_cfg.head_spec=[768]", "'rp_w_cfg.head_spec'"),
        ("rp_w_cfg.D_block_repeats=[]", "'rp_w_cfg.D_block_repeats'"),
        ("rp_w_cfg.num_critical=14", "'rp_w_cfg.num_critical' is 14; it must be < the number of layer_specs"),
        ("rp_w_cfg.g_ema_weight=2", "'rp_w_cfg.g_ema_weight'"),
        ("z_std=0", "'z_std' is 0.0"),
    ],
)
def test_bad_values_name_key_value_and_range(arg, message):
    """Issue 10 case 3: every numeric and list field is range-checked when the config is parsed."""
    with pytest.raises(ConfigError, match=message):
        parse_config([arg])


def test_seq_len_override_moves_layer_lengths_but_explicit_specs_win():
    cfg = parse_config(["rp_w_cfg.seq_len=64"])
    assert cfg.rp_w_cfg.layer_specs == hubert_layer_specs(64)
    explicit = "[[64,3,4],[64,3,8]]"
    cfg = parse_config(["rp_w_cfg.seq_len=64", f"rp_w_cfg.layer_specs={explicit}", "rp_w_cfg.num_critical=1"])
    assert cfg.rp_w_cfg.layer_specs == [[64, 3, 4], [64, 3, 8]]


def test_mel_preset():
    cfg = parse_config(["preset=mel"])
    assert cfg.c_dim == 128 and cfg.rp_w_cfg.c_dim == 128 and cfg.rp_w_cfg.seq_len == 96
    assert cfg.data_type == "melspec" and cfg.rp_w_cfg.layer_specs == mel_layer_specs(96)
    assert [s[2] for s in cfg.rp_w_cfg.layer_specs] == [12.0] * 5 + [24.0] * 4 + [48.0] * 3 + [96] * 2


def test_checkpoint_yaml_round_trip_keeps_layer_specs_and_tolerates_reference_extras():
    cfg = parse_config(["rp_w_cfg.seq_len=32", "model=rp_w"])
    text = config_to_yaml(cfg) + "batch_size_per_gpu: 24\n"  # the reference adds this key at run time
    back = config_from_yaml(text)
    assert back == cfg
    odd = config_to_yaml(cfg).replace("seq_len: 32", "seq_len: 48")  # specs in the file are taken as given
    assert config_from_yaml(odd).rp_w_cfg.layer_specs == hubert_layer_specs(32)
    with pytest.raises(ConfigError, match="'rp_w_cfg.bogus'"):
        config_from_yaml(config_to_yaml(cfg).replace("  z_dim: 512", "  z_dim: 512\n  bogus: 1", 1))


def test_generator_accepts_dataclass_dict_and_dictconfig():
    small = dict(z_dim=4, w_dim=4, c_dim=3, ff_channels=8, seq_len=4, layer_specs=[[8, 3, 2], [8, 3, 4]])
    for cfg in (RPWConfig(**small), small, OmegaConf.structured(RPWConfig(**small))):
        assert Generator(cfg).eval()(__import__("torch").randn(2, 4)).shape == (2, 4, 3)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATA = [
    "train_root=data/sc09_hubert",
    "checkpoint_path=runs/asgan",
    "sc09_train_csv=./splits/sc09-train.csv",
    "sc09_valid_csv=./splits/sc09-valid.csv",
]


def resolved(argv):
    return OmegaConf.to_container(parse_config(argv))


def test_paper_config_file_resolves_like_the_paper_command():
    """configs/sc09_hubert.yaml + the data keys == the README command (bench/bench_train.py) + the same keys."""
    from bench.bench_train import README_COMMAND as BENCH_COMMAND

    assert set(BENCH_COMMAND) <= set(README_COMMAND)
    paper = resolved(BENCH_COMMAND + ["use_sc09_splits=True"] + DATA)
    assert resolved(["--config", str(CONFIGS / "sc09_hubert.yaml"), *DATA]) == paper
    assert resolved([f"--config={CONFIGS / 'sc09_hubert.yaml'}", *DATA]) == resolved(README_COMMAND + DATA) == paper


@pytest.mark.parametrize("preset", ["mel", "mel_small"])
def test_preset_config_files_resolve_like_their_presets(preset):
    assert resolved(["--config", str(CONFIGS / f"{preset}.yaml")]) == resolved([f"preset={preset}"])


def test_config_file_comes_before_the_overrides_and_is_checked(tmp_path):
    cfg = parse_config(["--config", str(CONFIGS / "mel.yaml"), "rp_w_cfg.seq_len=48", "batch_size=8"])
    assert cfg.batch_size == 8 and cfg.rp_w_cfg.layer_specs == mel_layer_specs(48) and cfg.c_dim == 128
    with pytest.raises(ConfigError, match="no such file"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rp_w_cfg:\n  z_dimm: 3\n")
    with pytest.raises(ConfigError, match=f"Unknown config key 'rp_w_cfg.z_dimm' in {bad}.*rp_w_cfg.z_dim"):
        parse_config(["--config", str(bad)])
    bad.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match=f"'batch_size' in {bad}"):
        parse_config(["--config", str(bad)])
    with pytest.raises(ConfigError, match="--config needs a YAML file"):
        parse_config(["--config"])
