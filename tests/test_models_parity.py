"""Numerical parity of Generator, Discriminator and losses with recorded reference outputs."""

import copy
import json

import pytest
import torch

from density.losses import discriminator_loss, generator_loss, r1_penalty
from density.models import Discriminator, Generator

VARIANTS = ["tiny_hubert_eqlr", "tiny_hubert_sg3ff", "tiny_mel_no_eqlr"]
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module", params=VARIANTS)
def ref(request, fixtures_dir):
    return torch.load(fixtures_dir / "reference_asgan" / f"{request.param}.pt", weights_only=True)


def build(ref):
    g = Generator(ref["rp_w_cfg"])
    g.load_state_dict(ref["g_state_dict"], strict=True)
    d = Discriminator(ref["rp_w_cfg"], c_dim=ref["discriminator_args"]["c_dim"])
    d.load_state_dict(ref["d_state_dict"], strict=True)
    return g.eval(), d.eval()


def n_params(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def test_param_counts_and_buffers(ref):
    args, r = ref["discriminator_args"], ref["rp_w_cfg"]  # the reference's D arguments are rp_w_cfg fields
    assert (
        args["d_dim"],
        args["seq_len"],
        args["lrelu_coeff"],
        args["kernel_size"],
        list(args["block_repeats"]),
        args["equalized_lr"],
    ) == (
        r["D_head_dim"],
        r["seq_len"],
        r["lrelu_coeff"],
        r["D_kernel_size"],
        list(r["D_block_repeats"]),
        r["equalized_lr"],
    )
    g, d = build(ref)
    assert n_params(g) == ref["g_num_params"]
    assert n_params(d) == ref["d_num_params"]
    torch.testing.assert_close(g.cutoffs, ref["cutoffs"], rtol=0, atol=1e-7)
    # Filters designed here equal the recorded ones (so a fresh model has the reference buffers).
    fresh_g = Generator(ref["rp_w_cfg"])
    fresh_d = Discriminator(ref["rp_w_cfg"], c_dim=ref["discriminator_args"]["c_dim"])
    for fresh, sd in ((fresh_g, ref["g_state_dict"]), (fresh_d, ref["d_state_dict"])):
        for k, v in fresh.state_dict().items():
            if k.endswith("lpf_filter") or k.endswith("transform"):
                torch.testing.assert_close(v, sd[k], rtol=0, atol=1e-6, msg=k)


def test_generator_outputs(ref):
    g, _ = build(ref)
    with torch.no_grad():
        torch.testing.assert_close(g.W(ref["z"]), ref["w"], **TOL)
        torch.testing.assert_close(g(ref["z"]), ref["c"], **TOL)
        torch.testing.assert_close(g.forward_w(ref["w"], ref["seq_len"]), ref["c_from_w"], **TOL)
        torch.testing.assert_close(g.forward_w(ref["w_per_layer"], ref["seq_len"]), ref["c_from_w_per_layer"], **TOL)


def test_generator_train_mode_updates_norm_ema(ref):
    g, _ = build(ref)
    g = copy.deepcopy(g).train()
    with torch.no_grad():
        out = g(ref["z"], ref["seq_len"], update_ema=True)
    torch.testing.assert_close(out, ref["c_train_mode"], **TOL)
    sd = g.state_dict()
    assert len(ref["norm_ema_after_train_forward"]) == g.n_layers + 1
    for k, v in ref["norm_ema_after_train_forward"].items():
        torch.testing.assert_close(sd[k], v, **TOL, msg=k)


def test_discriminator_and_losses(ref):
    g, d = build(ref)
    with torch.no_grad():
        d_real, d_fake = d(ref["c_real"]), d(ref["c"])
    torch.testing.assert_close(d_real, ref["d_real"], **TOL)
    torch.testing.assert_close(d_fake, ref["d_fake"], **TOL)
    torch.testing.assert_close(generator_loss(ref["d_fake"]), ref["g_loss"], **TOL)
    torch.testing.assert_close(discriminator_loss(ref["d_real"], ref["d_fake"]), ref["d_loss"], **TOL)
    real = ref["c_real"].clone().requires_grad_(True)
    r1 = r1_penalty(d(real), real, ref["r1_gamma"])
    torch.testing.assert_close(r1.detach(), ref["r1"], **TOL)
    assert r1.requires_grad, "R1 must be differentiable w.r.t. D parameters (create_graph)"


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("defaults", []),
        ("readme_command", ["rp_w_cfg.w_layers=1", "rp_w_cfg.use_sg3_ff=True", "rp_w_cfg.D_kernel_size=5"]),
    ],
)
def test_full_size_state_dicts(fixtures_dir, name, overrides):
    from density.config import parse_config

    exp = json.loads((fixtures_dir / "reference_asgan" / "full_size_reference.json").read_text())[name]
    cfg = parse_config(overrides)
    g, d = Generator(cfg.rp_w_cfg), Discriminator.from_config(cfg)
    for model, keys, shapes, count in (
        (g, exp["g_keys"], exp["g_shapes"], exp["g"]),
        (d, exp["d_keys"], exp["d_shapes"], exp["d"]),
    ):
        sd = model.state_dict()
        assert sorted(sd) == sorted(keys)
        assert {k: list(v.shape) for k, v in sd.items()} == shapes
        assert n_params(model) == count
    assert len(g.state_dict()) == 117 and len(d.state_dict()) == 89
