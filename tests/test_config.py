"""Config schema, dotted overrides, presets, checkpoint YAML and clear errors."""

import dataclasses
import re
from pathlib import Path

import pytest
from helpers import run_command_under_memory_limit
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


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


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


YAML_PROBLEMS = {  # a config file's text -> the line and the problem the error names
    "malformed": ("batch_size: 8\nbetas: [0.5, 0.9\n", r"line 3: expected ',' or ']'"),
    "duplicate key": ("lr: 1e-3\nbatch_size: 8\nlr: 2e-3\n", r"line 3: key 'lr' is given twice"),
    "alias": ("betas: &b [0.5, 0.9]\nrp_w_cfg:\n  head_spec: *b\n", r"line 3: anchors and aliases .* not allowed"),
    "python tag": ("lr: !!python/object/apply:os.system ['true']\n", r"line 1: tag .*python/object.* not allowed"),
}


@pytest.mark.parametrize("problem", sorted(YAML_PROBLEMS))
def test_yaml_problems_in_a_config_file_are_one_line_errors_naming_file_and_line(tmp_path, problem):
    """Malformed YAML, duplicate keys, anchors/aliases and python tags: one line naming the file, the line and the
    problem (they used to be raw PyYAML tracebacks or, for an alias, an unrelated unknown-key error)."""
    text, expected = YAML_PROBLEMS[problem]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        parse_config(["--config", str(path)])
    assert "\n" not in str(e.value)
    assert re.match(f"--config {re.escape(str(path))}, {expected}", str(e.value)), str(e.value)


@pytest.mark.parametrize(
    "arg, expected",
    [
        ("train_root=[", r"line 1: expected the node content"),
        ("betas=[0.5, 0.9", r"line 1: expected ',' or ']'"),
        ("betas=[&a 0.5, *a]", r"line 1: anchors and aliases .* not allowed"),
        ("train_root=!!python/object/apply:os.system ['true']", r"line 1: tag .*python/object.* not allowed"),
        ("rp_w_cfg={z_dim: 8, z_dim: 9}", r"line 1: key 'z_dim' is given twice"),
    ],
)
def test_yaml_problems_in_an_override_value_are_one_line_errors_naming_it(arg, expected):
    with pytest.raises(ConfigError) as e:
        parse_config([arg])
    assert "\n" not in str(e.value)
    assert re.match(f"command-line override '{re.escape(arg)}', {expected}", str(e.value)), str(e.value)


def test_a_section_given_a_plain_value_is_named_with_the_fix(tmp_path):
    """`rp_w_cfg: 5` used to be "Bad value for config key ''"."""
    path = tmp_path / "section.yaml"
    path.write_text("batch_size: 8\nrp_w_cfg: 5\n")
    with pytest.raises(ConfigError, match=f"Config key 'rp_w_cfg' in {path} is 5; it must be a mapping of its keys"):
        parse_config(["--config", str(path)])
    with pytest.raises(ConfigError, match="Config key 'distributed' in the command line is 'x'; it must be a mapping"):
        parse_config(["distributed=x"])


def test_valid_yaml_keeps_omegaconf_semantics(tmp_path):
    """Interpolations, 1e-3 floats, nested sections and null read as before through the plain-YAML reader."""
    path = tmp_path / "ok.yaml"
    path.write_text("lr: 1e-3\nsc09_train_csv: ${train_root}/train.csv\nrp_w_cfg:\n  r1_gamma: 2.5e-1\n")
    cfg = parse_config(["--config", str(path), "train_root=/data", "z_std=5e-1", "sc09_valid_csv=${train_root}/v.csv"])
    assert cfg.lr == 1e-3 and cfg.rp_w_cfg.r1_gamma == 0.25 and cfg.z_std == 0.5
    assert cfg.sc09_train_csv == "/data/train.csv" and cfg.sc09_valid_csv == "/data/v.csv"
    assert parse_config(["betas=[0,0.99]", "rp_w_cfg.head_spec=[768,1]"]).betas == [0.0, 0.99]
    (tmp_path / "empty.yaml").write_text("")
    assert parse_config(["--config", str(tmp_path / "empty.yaml")]) == parse_config([])


@pytest.mark.parametrize(
    "arg, message",
    [
        ("lr=inf", r"'lr' is inf; it must be a finite number > 0"),
        ("lr=-inf", r"'lr' is -inf; it must be a finite number > 0"),
        ("lr=nan", r"'lr' is nan; it must be a finite number > 0"),
        ("d_lr_mult=inf", r"'d_lr_mult' is inf"),
        ("grad_clip=inf", r"'grad_clip' is inf; it must be a finite number >= 0 \(0 disables clipping\)"),
        ("rp_w_cfg.r1_gamma=inf", r"'rp_w_cfg.r1_gamma' is inf"),
        ("z_mean=inf", r"'z_mean' is inf; it must be a finite number\."),
    ],
)
def test_non_finite_values_are_refused_with_the_allowed_range(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_config([arg])


def test_keys_where_inf_means_no_threshold_still_take_it():
    cfg = parse_config(["d_loss_update_max_threshold=inf", "d_loss_update_min_threshold=-inf"])
    assert cfg.d_loss_update_max_threshold == float("inf") and cfg.d_loss_update_min_threshold == float("-inf")
    with pytest.raises(ConfigError, match="'d_loss_update_max_threshold' is nan"):
        parse_config(["d_loss_update_max_threshold=nan"])


ALIAS_BOMB = "".join(  # each level holds 10 references to the one before: 10**9 leaves once expanded
    [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 10)}]\n" for k in range(1, 10)]
)


@pytest.mark.slow
def test_an_alias_bomb_is_refused_at_once_under_a_memory_limit(tmp_path):
    """Run as the command under a 3-GB address-space limit and a timeout, so that a regression (expanding the
    aliases) fails the test instead of taking the machine's memory."""
    path = tmp_path / "bomb.yaml"
    path.write_text("l0: &l0 [lol]\n" + ALIAS_BOMB)
    done = run_command_under_memory_limit(["train_asgan.py", "--config", str(path)], timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"error: --config {path}, line 2: anchors and aliases (&name / *name) are not allowed"
    ]
