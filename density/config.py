"""Training and model configuration (reference notes 1-3) as plain dataclasses, read through OmegaConf.

Every field and default of the reference `TrainConfig` / `RP_W_Config` is kept so that the `cfg_yaml`
stored in an official checkpoint merges onto these schemas unchanged. Differences from the reference:
- `distributed` and `rp_w_cfg` use `default_factory` (the reference schema fails on Python >= 3.11).
- `layer_specs` follow an overridden `rp_w_cfg.seq_len` on the command line (the reference froze them at
  class-definition time); an explicit `layer_specs` (e.g. from a checkpoint) is taken as given.
- `preset=mel` switches to the mel variant (c_dim 128, seq_len 96, the mel layer specs, data_type melspec).
- Unknown keys are errors that name the closest valid keys.
"""

import difflib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from density.runtime.safe_yaml import YAMLError, load_yaml


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message says which and what to do."""


def hubert_layer_specs(seq_len: int = 48) -> list[list[Any]]:
    """(c_out, kernel, length) of the 14 synthesis layers of the HuBERT variant (reference note 2)."""
    return (
        [[1024, 3, seq_len / 8]] * 5
        + [[768, 3, seq_len / 4]] * 4
        + [[512, 3, seq_len / 2]] * 3
        + [[512, 3, seq_len]] * 2
    )


def mel_layer_specs(seq_len: int = 96) -> list[list[Any]]:
    """(c_out, kernel, length) of the 14 synthesis layers of the mel variant (reference note 2)."""
    return (
        [[1024, 5, seq_len / 8]] * 5
        + [[512, 5, seq_len / 4]] * 4
        + [[256, 5, seq_len / 2]] * 3
        + [[128, 5, seq_len]] * 2
    )


@dataclass
class DistributedConfig:
    dist_backend: str = "nccl"
    dist_url: str = "tcp://localhost:54321"
    n_nodes: int = 1
    n_gpus_per_node: int = 1


@dataclass
class RPWConfig:
    """Generator and discriminator hyper-parameters (`rp_w_cfg`, reference note 1)."""

    z_dim: int = 512
    c_dim: int = 768
    w_lr_mult: float = 0.01
    w_dim: int = 512
    w_layers: int = 2
    ff_channels: int = 512
    init_B_std: float = 0.1
    seq_len: int = 48
    apply_r1_every: int = 8
    r1_gamma: float = 0.05
    first_cutoff: float = 0.125
    last_cutoff: float = 0.45
    num_critical: int = 2
    layer_specs: list[Any] = field(default_factory=hubert_layer_specs)
    head_spec: list[Any] = field(default_factory=lambda: [768, 1])
    lrelu_coeff: float = 0.1
    D_head_dim: int = 512
    D_kernel_size: int = 3
    D_block_repeats: list[int] = field(default_factory=lambda: [3, 3, 3, 3])
    equalized_lr: bool = True
    g_ema_weight: float = 0.1
    use_sg3_ff: bool = False


@dataclass
class TrainConfig:
    """Everything `train_asgan.py` reads (reference note 1), plus this project's additions at the end."""

    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    rv: bool = True
    c_dim: int = 768
    z_dim: int = 512
    z_mean: float = 0.0
    z_std: float = 1.0
    device: str = "cuda"
    preload: bool = False
    seed: int = 1775
    batch_size: int = 24
    num_workers: int = 8
    fp16: bool = True
    n_epochs: int = 50
    summary_interval: int = 50
    grad_summary_interval: int = 500
    checkpoint_interval: int = 5000
    stdout_interval: int = 100
    validation_interval: int = 2500
    update_ratio: int = 1
    d_loss_update_max_threshold: float = 9999
    d_loss_update_min_threshold: float = -9999
    lr: float = 6e-5
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    grad_clip: float = 1.0
    checkpoint_path: str = MISSING
    train_root: str = MISSING
    n_valid: int = MISSING
    resume_checkpoint: str = ""  # a checkpoint file, or 'auto': the newest in checkpoint_path (density/runtime/run.py)
    aug_init_p: float = 0.05
    adapt_d_lr: bool = False
    d_lr_mult: float = 1.0
    rp_w_cfg: RPWConfig = field(default_factory=RPWConfig)
    model: str = "rv_w"
    data_type: str = "hubert_L6"
    use_sc09_splits: bool = False
    sc09_valid_csv: str = ""
    sc09_train_csv: str = ""
    # --- additions of this project (not in the reference) ---
    preset: str = "hubert"  # 'hubert' or 'mel': which variant's dimensions and layer specs to start from
    engine: str = "torch"  # 'torch' (one process, or DDP under torchrun) or 'deepspeed'
    bf16: bool = False  # bfloat16 autocast/engine instead of fp16 (no loss scaling); takes precedence over fp16
    ema_every: int = 0  # update the EMA generator every N steps; 0 = at checkpoint intervals (reference)
    keep_last_checkpoints: int = 0  # keep only the newest N periodic checkpoints; 0 = keep all (reference)
    max_nonfinite_steps: int = 20  # abort after this many consecutive non-finite (skipped) steps
    max_steps: int = 0  # stop after this many global steps with a final checkpoint; 0 = run n_epochs
    sil_vec_path: str = ""  # (c_dim,) tensor file padding short HuBERT items; '' = zeros (reference fallback)
    fad_hubert_checkpoint: str = ""  # melspec/wav: FAD on this HuBERT's layer 6 (reference note 33); '' = raw frames
    fad_vocoder: str = ""  # vocoder path/URL (melspec, hubert_L6) for the FAD and the audio samples; '' = Griffin-Lim
    ada_adapt: bool = True  # adapt the augmentation / D-skip probability p to D's confidence; false keeps aug_init_p
    normalize_features: bool = False  # standardise each feature channel with training-split statistics (FeatureNorm)
    overwrite: bool = False  # let a run delete the checkpoints in checkpoint_path it would otherwise refuse to touch
    audio_samples: int = 4  # tensorboard audio of G(z) for this many fixed z at each validation; 0 = off
    init_checkpoint: str = ""  # start a new run from these weights (fresh optimisers, step 0); '' = random init
    init_parts: list[str] = field(default_factory=lambda: ["G", "D", "G_ema"])  # which weights init_checkpoint gives
    init_strict: bool = True  # false: tensors that are missing or differ in shape keep their fresh init (logged)
    lr_final_mult: float = 1.0  # cosine lr decay (G and D) to lr x this at max_steps; 1 = constant (reference)


RP_W_Config = RPWConfig

# The presets (`preset=NAME`, applied before a --config file and the command line): defined here only;
# configs/mel.yaml and configs/mel_small.yaml just name them.
PRESETS = {
    "hubert": [],
    "mel": [
        "c_dim=128",
        "rp_w_cfg.c_dim=128",
        "rp_w_cfg.seq_len=96",
        "rp_w_cfg.head_spec=[128,1]",
        "data_type=melspec",
    ],
    # The CPU demo (`make demo`): the mel variant at reduced width and depth, standardised log-mels, rates and an
    # EMA cadence found by experiment (README, "The demo preset"). Not a paper configuration.
    "mel_small": [
        "model=rp_w",
        "c_dim=128",
        "rp_w_cfg.c_dim=128",
        "rp_w_cfg.seq_len=96",
        "rp_w_cfg.head_spec=[128,1]",
        "data_type=melspec",
        "normalize_features=true",
        "z_dim=256",
        "rp_w_cfg.z_dim=256",
        "rp_w_cfg.w_dim=256",
        "rp_w_cfg.ff_channels=256",
        "rp_w_cfg.layer_specs=[[256,5,12],[256,5,24],[128,5,48],[128,5,96]]",
        "rp_w_cfg.D_head_dim=128",
        "rp_w_cfg.D_block_repeats=[1,1,1,1]",
        "rp_w_cfg.D_kernel_size=5",
        "rp_w_cfg.r1_gamma=1",
        "lr=2e-3",
        "d_lr_mult=1",
        "betas=[0,0.99]",
        "batch_size=16",
        "aug_init_p=0.2",
        "ada_adapt=false",
        "ema_every=10",
        "fp16=false",
        "device=cpu",
        "num_workers=0",
        "preload=true",
        "checkpoint_interval=250",
        "validation_interval=250",
        "summary_interval=10",
        "stdout_interval=50",
        "grad_summary_interval=250",
        "n_epochs=1000",
        "max_steps=2000",
        "use_sc09_splits=true",
    ],
}
INIT_PARTS = ("G", "D", "G_ema")
CHOICES = {"engine": ("torch", "deepspeed"), "data_type": ("hubert_L6", "melspec", "wav"), "preset": tuple(PRESETS)}


# ---------------------------------------------------------------- value ranges, one mechanism for every command


@dataclass(frozen=True)
class Range:
    """The values a config key allows: `test(value)` (a list value comes as a Python list) and the range in
    words, as the error states it (e.g. '>= 1', 'in (0, 4]'). Infinite and NaN numbers (also inside a list) are
    refused before `test` unless `finite` is False (a key for which inf means something)."""

    test: Callable[[Any], bool]
    allowed: str
    finite: bool = True


def at_least(low, note=""):
    """value >= low (NaN fails); `note` is added to the words in brackets."""
    return Range(lambda v: v >= low, f">= {low}" + (f" ({note})" if note else ""))


def above(low, note=""):
    """value > low (NaN fails)."""
    return Range(lambda v: v > low, f"> {low}" + (f" ({note})" if note else ""))


def within(low, high, note=""):
    """low <= value <= high (NaN fails)."""
    return Range(lambda v: low <= v <= high, f"in [{low}, {high}]" + (f" ({note})" if note else ""))


def _all_finite(value):
    """Whether every float of a value (a number or a nested list) is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    return True


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _layer_specs_ok(specs):
    shapes = len(specs) > 0 and all(
        isinstance(s, list)
        and len(s) == 3
        and _is_int(s[0])
        and _is_int(s[1])
        and s[0] >= 1
        and s[1] >= 1
        and _is_number(s[2])
        and s[2] > 0
        for s in specs
    )
    return shapes and all(b[2] in (a[2], 2 * a[2]) for a, b in zip(specs[:-1], specs[1:]))


SEED = Range(lambda v: 0 <= v < 2**31, "in [0, 2**31)")
BETAS = Range(
    lambda v: len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. [0.8,0.99]"
)
KEY_EQUALS = "{key}={value}: must be {allowed}"  # the wording of the commands that take key=value (as typed)
KEY_IS = "Config key '{key}' is {value}; it must be {allowed}."  # train_asgan.py's wording (its other errors too)


def check_ranges(cfg: DictConfig, ranges: dict[str, Range], wording: str = KEY_EQUALS) -> None:
    """ConfigError for the first key of `ranges` (dotted keys) whose value is outside its Range, naming the key,
    the value and the allowed range in `wording` (a non-finite value: 'a finite number <range>'); a mandatory
    value still missing (???) is not checked here."""
    for key, allowed in ranges.items():
        if OmegaConf.is_missing(cfg, key):
            continue
        value = OmegaConf.select(cfg, key)
        if isinstance(value, (ListConfig, DictConfig)):
            value = OmegaConf.to_container(value)
        if allowed.finite and not _all_finite(value):
            words = f"{'finite numbers:' if isinstance(value, list) else 'a finite number'} {allowed.allowed}"
            raise ConfigError(wording.format(key=key, value=value, allowed=words.strip()))
        if not allowed.test(value):
            raise ConfigError(wording.format(key=key, value=value, allowed=allowed.allowed))


_POSITIVE_INTS = (
    "distributed.n_nodes",
    "distributed.n_gpus_per_node",
    "c_dim",
    "z_dim",
    "batch_size",
    "n_epochs",
    "summary_interval",
    "grad_summary_interval",
    "checkpoint_interval",
    "stdout_interval",
    "validation_interval",
    "update_ratio",
    "max_nonfinite_steps",
    "rp_w_cfg.z_dim",
    "rp_w_cfg.c_dim",
    "rp_w_cfg.w_dim",
    "rp_w_cfg.w_layers",
    "rp_w_cfg.ff_channels",
    "rp_w_cfg.seq_len",
    "rp_w_cfg.apply_r1_every",
    "rp_w_cfg.D_head_dim",
    "rp_w_cfg.D_kernel_size",
)
_COUNTS = (
    "num_workers",
    "ema_every",
    "keep_last_checkpoints",
    "max_steps",
    "n_valid",
    "rp_w_cfg.num_critical",
    "audio_samples",
)
_CUTOFF = Range(lambda v: 0 < v <= 0.5, "in (0, 0.5] (a fraction of the sample rate)")
# The allowed range of every numeric and list field of TrainConfig (check_values)
RANGES = {
    **{k: at_least(1) for k in _POSITIVE_INTS},
    **{k: at_least(0) for k in _COUNTS},
    "seed": SEED,
    "lr": above(0),
    "d_lr_mult": above(0),
    "lr_final_mult": within(0, 1, "1 keeps the lr constant"),
    "z_std": above(0, "it is the variance of each z entry"),
    "z_mean": Range(lambda _: True, ""),  # any finite number
    "d_loss_update_max_threshold": Range(lambda v: not math.isnan(v), "a number (inf: no threshold)", finite=False),
    "d_loss_update_min_threshold": Range(lambda v: not math.isnan(v), "a number (-inf: no threshold)", finite=False),
    "grad_clip": at_least(0, "0 disables clipping"),
    "aug_init_p": within(0, 1),
    "rp_w_cfg.w_lr_mult": above(0),
    "rp_w_cfg.init_B_std": at_least(0),
    "rp_w_cfg.r1_gamma": at_least(0),
    "rp_w_cfg.first_cutoff": _CUTOFF,
    "rp_w_cfg.last_cutoff": _CUTOFF,
    "rp_w_cfg.lrelu_coeff": Range(lambda v: 0 <= v < 1, "in [0, 1)"),
    "rp_w_cfg.g_ema_weight": within(0, 1),
    "betas": BETAS,
    "rp_w_cfg.layer_specs": Range(
        _layer_specs_ok,
        "a non-empty list of [channels >= 1, kernel >= 1, length > 0], with lengths that stay or double from one "
        "layer to the next",
    ),
    "rp_w_cfg.head_spec": Range(
        lambda v: len(v) == 2 and all(_is_int(x) and x >= 1 for x in v), "[channels >= 1, kernel >= 1]"
    ),
    "init_parts": Range(
        lambda v: bool(v) and set(v) <= set(INIT_PARTS) and len(set(v)) == len(v),
        f"a non-empty list of distinct parts from {list(INIT_PARTS)}",
    ),
    "rp_w_cfg.D_block_repeats": Range(
        lambda v: len(v) > 0 and all(_is_int(x) and x >= 1 for x in v), "a non-empty list of integers >= 1"
    ),
}


def check_values(cfg: DictConfig) -> DictConfig:
    """Check every choice, numeric range and list shape of a TrainConfig in one pass; ConfigError names the key,
    the value and the allowed range."""
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"Config key '{key}' is {value!r}; choose one of {list(choices)}.")
    check_ranges(cfg, RANGES, KEY_IS)
    n_layers = len(cfg.rp_w_cfg.layer_specs)
    if not cfg.rp_w_cfg.num_critical < n_layers:
        raise ConfigError(
            KEY_IS.format(
                key="rp_w_cfg.num_critical",
                value=cfg.rp_w_cfg.num_critical,
                allowed=f"< the number of layer_specs ({n_layers})",
            )
        )
    return cfg


# Keys that reference checkpoints carry in `cfg_yaml` but no code reads (added at run time, reference note 1).
_LEGACY_KEYS = ("batch_size_per_gpu",)


def _valid_keys(node, prefix=""):
    """All dotted keys of a config tree, sections included."""
    keys = []
    for k in node.keys():
        full = f"{prefix}{k}"
        keys.append(full)
        child = node._get_node(k)
        if isinstance(child, DictConfig):
            keys += _valid_keys(child, full + ".")
    return keys


def _check_keys(schema: DictConfig, keys, source: str, command: str = "train_asgan.py") -> None:
    valid = set(_valid_keys(schema))
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"Unknown config key '{key}' in {source}.{hint} Run `python {command} --help` for all keys."
            )


def read_overrides(argv: list[str]) -> DictConfig:
    """`key=value` arguments -> a DictConfig, each value read as plain YAML (density.runtime.safe_yaml: no aliases,
    no duplicate keys, no python tags), as OmegaConf.from_dotlist would build it; ConfigError names the argument."""
    overrides = OmegaConf.create()
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"Argument '{arg}' is not of the form key=value (e.g. batch_size=16).")
        key, text = arg.split("=", 1)
        try:
            OmegaConf.update(overrides, key, load_yaml(text, f"command-line override '{arg}'"))
        except YAMLError as e:
            raise ConfigError(str(e)) from None
        except (OmegaConfBaseException, ValueError) as e:
            raise ConfigError(f"Cannot parse command-line override '{arg}': {e}") from None
    return overrides


def _check_sections(schema: DictConfig, given: DictConfig, source: str, prefix: str = "") -> None:
    """ConfigError for a key of `given` whose schema entry is a section (a mapping of keys, e.g. rp_w_cfg) but
    whose value is not a mapping; OmegaConf's own message would name no key."""
    for key in given.keys():
        node, value = schema._get_node(key), given._get_node(key)
        if not isinstance(node, DictConfig):
            continue
        full = f"{prefix}{key}"
        if not isinstance(value, DictConfig):
            example = next(iter(node.keys()), "key")
            raise ConfigError(
                f"Config key '{full}' in {source} is {OmegaConf.to_container(given)[key]!r}; it must be a mapping of "
                f"its keys (e.g. {full}.{example}=... on the command line, or `{example}: ...` indented under "
                f"`{full}:` in a YAML file). Run with --help for its keys."
            )
        _check_sections(node, value, source, full + ".")


def parse_overrides(schema: DictConfig, argv: list[str], command: str) -> DictConfig:
    """Merge `key=value` overrides (YAML values) onto a structured `schema` for the script `command`;
    ConfigError names a malformed argument, an unknown key (with the closest valid ones) or a bad value."""
    overrides = read_overrides(argv)
    _check_keys(schema, [a.split("=", 1)[0] for a in argv], "the command line", command)
    _check_sections(schema, overrides, "the command line")
    return _merge(schema, overrides, source="the command line")


def require_keys(cfg: DictConfig, keys) -> None:
    """ConfigError for the first of the mandatory `keys` that is still MISSING (a command's run settings)."""
    for key in keys:
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"config key '{key}' is mandatory: add {key}=... to the command")


def default_config() -> DictConfig:
    """The structured default TrainConfig (type-checked DictConfig)."""
    return OmegaConf.structured(TrainConfig)


def _merge(base: DictConfig, *others, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, *others)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        raise ConfigError(
            f"Bad value for config key '{key}' in {source}: {e.msg if hasattr(e, 'msg') else e}"
        ) from None


def config_file_argument(argv: list[str]):
    """-> (the file of `--config FILE` / `--config=FILE` or None, the other arguments)."""
    rest, path = [], None
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            path = next(args, None)
            if path is None:
                raise ConfigError("--config needs a YAML file: --config configs/<name>.yaml")
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return path, rest


def read_config_file(path: str, schema: DictConfig) -> DictConfig:
    """A YAML mapping of config keys (nested like `--help` prints them), read as plain YAML
    (density.runtime.safe_yaml), its keys and sections checked against `schema`."""
    source = f"--config {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: not a readable YAML file ({e})") from None
    try:
        data = load_yaml(text, source)
    except YAMLError as e:
        raise ConfigError(str(e)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: holds no mapping of config keys")
    try:
        loaded = OmegaConf.create(data)
    except (OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"{source}: not a mapping of config keys ({e})") from None
    _check_keys(schema, _valid_keys(loaded), path)
    _check_sections(schema, loaded, path)
    return loaded


def parse_config(argv: list[str] | None = None) -> DictConfig:
    """Merge an optional `--config FILE` (YAML), then `key=value` / `section.key=value` overrides (YAML values,
    lists as `[a,b]`) onto the default.

    The preset (`preset=...` on the command line, else in the file, else hubert) is applied first. If
    `rp_w_cfg.seq_len` is given (file or command line) and `rp_w_cfg.layer_specs` is not, the layer lengths are
    recomputed for the new seq_len.
    """
    path, argv = config_file_argument(list(sys.argv[1:] if argv is None else argv))
    overrides = read_overrides(argv)
    schema = default_config()
    given = [a.split("=", 1)[0] for a in argv]
    _check_keys(schema, given, "the command line")
    _check_sections(schema, overrides, "the command line")
    from_file = read_config_file(path, schema) if path else OmegaConf.create()
    given += _valid_keys(from_file)
    preset = overrides.get("preset", from_file.get("preset", "hubert"))
    if preset not in PRESETS:
        raise ConfigError(f"Unknown preset '{preset}'; choose one of {sorted(PRESETS)}.")
    cfg = _merge(schema, OmegaConf.from_dotlist(PRESETS[preset]), from_file, source=path or "the preset")
    cfg = _merge(cfg, overrides, source="the command line")
    if preset == "mel" and "rp_w_cfg.layer_specs" not in given:
        cfg.rp_w_cfg.layer_specs = mel_layer_specs(cfg.rp_w_cfg.seq_len)
    elif "rp_w_cfg.seq_len" in given and "rp_w_cfg.layer_specs" not in given:
        cfg.rp_w_cfg.layer_specs = hubert_layer_specs(cfg.rp_w_cfg.seq_len)
    return check_values(cfg)


MANDATORY = ("checkpoint_path", "train_root")  # of a training run
SPLIT_KEYS = ("sc09_train_csv", "sc09_valid_csv")  # mandatory with use_sc09_splits=true


def check_config(cfg: DictConfig) -> None:
    """What a training run needs beyond `check_values`: the mandatory keys and the combinations train_asgan.py
    supports; ConfigError says what to add or change."""
    require_keys(cfg, MANDATORY + (SPLIT_KEYS if cfg.use_sc09_splits else ()))
    if cfg.model != "rp_w":
        raise ConfigError(
            f"model={cfg.model}: only model=rp_w is implemented (the reference default 'rv_w' "
            "raises as well); add model=rp_w"
        )
    for key in ("c_dim", "z_dim"):
        if cfg[key] != cfg.rp_w_cfg[key]:
            raise ConfigError(f"{key}={cfg[key]} must equal rp_w_cfg.{key}={cfg.rp_w_cfg[key]}; set both")
    if cfg.fad_hubert_checkpoint and cfg.data_type == "hubert_L6":
        raise ConfigError(
            "fad_hubert_checkpoint is for data_type melspec or wav: hubert_L6 features are already "
            "HuBERT features and their FAD uses them as they are; remove fad_hubert_checkpoint"
        )
    if cfg.fad_vocoder and cfg.data_type == "wav":
        raise ConfigError(
            "fad_vocoder is for data_type melspec or hubert_L6 (the FAD and the validation audio); "
            "wav data needs none: remove fad_vocoder"
        )
    if cfg.lr_final_mult != 1 and not cfg.max_steps:
        raise ConfigError(
            f"lr_final_mult={cfg.lr_final_mult} decays the lr until max_steps: set max_steps=N too (or lr_final_mult=1)"
        )
    if cfg.batch_size % min(4, cfg.batch_size):
        raise ConfigError(
            f"batch_size={cfg.batch_size}: the discriminator groups samples in fours "
            "(minibatch std); use a multiple of 4"
        )


def config_from_yaml(text: str) -> DictConfig:
    """Rebuild a TrainConfig from a checkpoint's `cfg_yaml` (the reference's or ours); layer_specs as given."""
    loaded = OmegaConf.create(text)
    if not isinstance(loaded, DictConfig):
        raise ConfigError("Checkpoint cfg_yaml is not a mapping; is this an ASGAN checkpoint?")
    for key in _LEGACY_KEYS:
        loaded.pop(key, None)
    schema = default_config()
    _check_keys(schema, _valid_keys(loaded), "the checkpoint's cfg_yaml")
    return _merge(schema, loaded, source="the checkpoint's cfg_yaml")


def config_to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg)


def rp_w_section(cfg) -> Any:
    """Accept a TrainConfig (returns its `rp_w_cfg`) or an rp_w_cfg itself (dataclass, DictConfig, dict).

    A dict may be partial: missing fields take the RPWConfig defaults; unknown fields are an error.
    """
    if isinstance(cfg, dict):
        section = cfg.get("rp_w_cfg", cfg)
        _check_keys(OmegaConf.structured(RPWConfig), list(section), "the generator config")
        return _merge(OmegaConf.structured(RPWConfig), section, source="the generator config")
    if isinstance(cfg, (DictConfig, ListConfig)):
        return cfg.rp_w_cfg if "rp_w_cfg" in cfg else cfg
    return getattr(cfg, "rp_w_cfg", cfg)
