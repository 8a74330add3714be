"""Load fairseq HuBERT checkpoints without fairseq and without running code from the file.

A fairseq checkpoint is a torch zip archive whose pickle holds tensors, plain containers and a few fairseq
objects (the `Dictionary` label sets in `task_state`). `load_fairseq_checkpoint` unpickles it with an
allow-list: torch tensor/storage rebuilding, `collections.OrderedDict`, `argparse.Namespace`, numpy scalars
and arrays, harmless builtins. Every `fairseq.*` global becomes an inert `FairseqPlaceholder` that only
records its arguments and state; any other global raises `UnsafeCheckpointError` naming it, before it is
called. State may only be set on instances of the allowed classes (pickle's BUILD on a class or function
would let a file overwrite, e.g., the defaults of torch's own tensor rebuilder), so the pure-Python unpickler
runs with that opcode guarded. `hubert_config` and `hubert_state_dict` turn the fairseq config and weights
into a transformers `HubertConfig` and a `HubertModel` state dict.
"""

import _compat_pickle
import argparse
import ast
import codecs
import collections
import pickle
import types

import numpy as np
import torch

# (module, name) -> object that a checkpoint pickle may reference.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles of bytes (numpy scalars) use it
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}
for _numpy_core in ("numpy.core.multiarray", "numpy._core.multiarray"):  # module name before / after numpy 2
    _ALLOWED[(_numpy_core, "scalar")] = np._core.multiarray.scalar
    _ALLOWED[(_numpy_core, "_reconstruct")] = np._core.multiarray._reconstruct
_ALLOWED.update({("numpy.dtypes", n): getattr(np.dtypes, n) for n in np.dtypes.__all__})
_ALLOWED.update({("torch", n): getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)})


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint references a global outside the allow-list; it was not loaded."""


class Placeholder:
    """Inert stand-in for a pickled object of an allowed foreign class: keeps constructor args and state, runs
    nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<placeholder for {type(self).__module__}.{type(self).__qualname__}>"


class FairseqPlaceholder(Placeholder):
    """Inert stand-in for a pickled fairseq object."""


class RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python unpickler that resolves only `allowed` globals and turns the globals `placeholder_for`
    accepts into inert `placeholder_base` subclasses. BUILD (set state) is allowed only on instances of
    `buildable`; never on a class, function or module. `kind` names the expected file in errors. Subclass and
    override these four to read another format."""

    allowed = _ALLOWED
    placeholder_base = FairseqPlaceholder
    buildable = (collections.OrderedDict, argparse.Namespace, Placeholder, np.ndarray, np.dtype)
    kind = "a fairseq checkpoint"
    _placeholders = {}  # (base, module, name) -> placeholder class
    dispatch = dict(pickle._Unpickler.dispatch)

    @staticmethod
    def placeholder_for(module, name):
        return module == "fairseq" or module.startswith("fairseq.")

    def load_build(self):
        inst = self.stack[-2]  # below the state
        if not isinstance(inst, self.buildable):
            raise UnsafeCheckpointError(
                f"checkpoint sets the state of {inst!r}, which {self.kind} never "
                "does; refusing to load it (the file may be unsafe)"
            )
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))  # Python 2 names in
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # protocol <= 2 pickles, e.g. __builtin__
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if self.placeholder_for(module, name):
            key = (self.placeholder_base, module, name)
            if key not in self._placeholders:
                self._placeholders[key] = type(name, (self.placeholder_base,), {"__module__": module})
            return self._placeholders[key]
        raise UnsafeCheckpointError(
            f"checkpoint references the global '{module}.{name}', which {self.kind} "
            "does not need; refusing to load it (the file may be unsafe)"
        )


def restricted_pickle_module(unpickler):
    """A pickle "module" for torch.load(pickle_module=...): torch subclasses its `Unpickler` (keeping our
    find_class) and calls `load`."""
    return types.SimpleNamespace(
        Unpickler=unpickler, load=lambda f, **kw: unpickler(f, **kw).load(), __name__="restricted_pickle"
    )


_restricted_pickle = restricted_pickle_module(RestrictedUnpickler)


def load_fairseq_checkpoint(path):
    """Safely read a fairseq checkpoint file -> dict (`cfg`, `model`, ...) with tensors on the CPU."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except Exception as e:  # truncated, corrupt or not a torch file at all
        raise ValueError(
            f"{path}: cannot read this checkpoint ({type(e).__name__}: {e}); is it a complete fairseq HuBERT .pt file?"
        ) from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{path}: not a fairseq checkpoint (expected a dict with a 'model' state dict)")
    return ckpt


def _conv_layers(spec):
    """Evaluate fairseq's conv_feature_layers string, e.g. '[(512,10,5)] + [(512,3,2)] * 4', with no eval()."""

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported conv_feature_layers expression: {spec!r}")

    layers = ev(ast.parse(spec, mode="eval").body)
    if not all(isinstance(layer, list) and len(layer) == 3 for layer in layers):
        raise ValueError(f"conv_feature_layers must be a list of (dim, kernel, stride): {spec!r}")
    return layers


def _model_cfg(ckpt):
    """The model section of a fairseq checkpoint config, as a dict (new `cfg` dict or old `args` Namespace)."""
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), (dict, argparse.Namespace)):
        model = cfg["model"]
        return vars(model) if isinstance(model, argparse.Namespace) else model
    if isinstance(ckpt.get("args"), argparse.Namespace):
        return vars(ckpt["args"])
    raise ValueError("fairseq checkpoint has neither cfg['model'] nor args; is it a fairseq HuBERT checkpoint?")


def task_normalize(ckpt):
    """The task's `normalize` flag (layer-normalise the waveform before the model); False when absent."""
    cfg = ckpt.get("cfg")
    task = cfg.get("task") if isinstance(cfg, dict) else ckpt.get("args")
    task = vars(task) if isinstance(task, argparse.Namespace) else (task or {})
    return bool(task.get("normalize", False))


def hubert_config(ckpt):
    """fairseq HuBERT model config -> transformers HubertConfig (inference-relevant fields)."""
    from transformers import HubertConfig

    m = _model_cfg(ckpt)
    mode = m.get("extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"unsupported fairseq extractor_mode {mode!r} (expected 'default' or 'layer_norm')")
    if m.get("pos_conv_depth", 1) != 1 or m.get("conv_pos_batch_norm", False):
        raise ValueError(
            "unsupported fairseq positional conv (pos_conv_depth > 1 or conv_pos_batch_norm); "
            "HuBERT uses one weight-normed conv"
        )
    conv = _conv_layers(m.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"))
    return HubertConfig(
        hidden_size=m.get("encoder_embed_dim", 768),
        num_hidden_layers=m.get("encoder_layers", 12),
        num_attention_heads=m.get("encoder_attention_heads", 12),
        intermediate_size=m.get("encoder_ffn_embed_dim", 3072),
        hidden_act=m.get("activation_fn", "gelu"),
        feat_extract_norm="group" if mode == "default" else "layer",
        feat_extract_activation="gelu",  # fairseq's conv extractor and positional conv always use GELU
        conv_dim=[c[0] for c in conv],
        conv_kernel=[c[1] for c in conv],
        conv_stride=[c[2] for c in conv],
        conv_bias=bool(m.get("conv_bias", False)),
        num_conv_pos_embeddings=m.get("conv_pos", 128),
        num_conv_pos_embedding_groups=m.get("conv_pos_groups", 16),
        do_stable_layer_norm=bool(m.get("layer_norm_first", False)),
        feat_proj_layer_norm=True,  # fairseq HuBERT always layer-norms the conv features before projecting
        layer_norm_eps=1e-5,  # fairseq LayerNorm / GroupNorm default
    )


_TRAINING_ONLY = ("label_embs_concat", "final_proj.", "label_embs.")

# fairseq key prefix -> transformers key prefix, applied in order (first match wins).
_RENAMES = (
    ("layer_norm.", "feature_projection.layer_norm."),
    ("post_extract_proj.", "feature_projection.projection."),
    ("mask_emb", "masked_spec_embed"),
    ("encoder.pos_conv.0.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias"),
    ("encoder.layer_norm.", "encoder.layer_norm."),
)
_LAYER_RENAMES = (
    ("self_attn.", "attention."),
    ("self_attn_layer_norm.", "layer_norm."),
    ("fc1.", "feed_forward.intermediate_dense."),
    ("fc2.", "feed_forward.output_dense."),
    ("final_layer_norm.", "final_layer_norm."),
)


def _rename(key, group_norm):
    if key.startswith("feature_extractor.conv_layers."):
        i, sub, rest = key.split(".", 4)[2:]  # conv_layers.<i>.<sub>.<rest>
        if sub == "0":
            return f"feature_extractor.conv_layers.{i}.conv.{rest}"
        if group_norm and sub == "2":  # Sequential(conv, dropout, GroupNorm, GELU)
            return f"feature_extractor.conv_layers.{i}.layer_norm.{rest}"
        if not group_norm and sub == "2" and rest.startswith("1."):  # Sequential(conv, dropout, (T, LN, T), GELU)
            return f"feature_extractor.conv_layers.{i}.layer_norm.{rest[2:]}"
    if key.startswith("encoder.layers."):
        i, rest = key.split(".", 3)[2:]
        for old, new in _LAYER_RENAMES:
            if rest.startswith(old):
                return f"encoder.layers.{i}.{new}{rest[len(old) :]}"
    for old, new in _RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(f"unexpected fairseq HuBERT weight '{key}'")


def hubert_state_dict(ckpt, config):
    """fairseq HuBERT weights -> transformers HubertModel state dict (training-only weights dropped)."""
    group_norm = config.feat_extract_norm == "group"
    out = {}
    for key, value in ckpt["model"].items():
        if key.startswith(_TRAINING_ONLY):
            continue
        out[_rename(key, group_norm)] = value
    return out
