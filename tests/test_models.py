"""Behaviour of the model parts beyond fixture parity: efficient forms, shapes and clear errors."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from density.config import parse_config
from density.models import Discriminator, Generator, Resampler, SynthesisLayer, minibatch_std


def tiny_cfg(*extra):
    specs = "rp_w_cfg.layer_specs=[[32,3,2],[32,3,2],[24,3,4],[16,3,8]]"
    return parse_config(
        [
            "rp_w_cfg.z_dim=8",
            "rp_w_cfg.w_dim=8",
            "rp_w_cfg.c_dim=6",
            "c_dim=6",
            "z_dim=8",
            "rp_w_cfg.ff_channels=16",
            "rp_w_cfg.seq_len=8",
            "rp_w_cfg.D_head_dim=8",
            specs,
            *extra,
        ]
    )


def reference_modulated_conv(layer, x, w):
    """The reference's literal form: per-sample weights (B, C_out, C_in, k) and a grouped convolution."""
    B = x.shape[0]
    W, s = layer.conv.weight, layer.affine(w)
    if layer.normalize:
        W = W / W.square().mean(dim=(1, 2), keepdim=True).sqrt()
        s = s / s.square().mean().sqrt()
    else:
        s = s * layer.conv.weight_gain
    Wb = W[None] * s[:, None, :, None]
    if layer.normalize:
        Wb = Wb * (Wb.square().sum(dim=(2, 3), keepdim=True) + 1e-8).rsqrt()
    if layer.equalized_lr:
        Wb = Wb * layer.norm_ema.rsqrt()
    else:
        x = x * layer.norm_ema.rsqrt()
    k = W.shape[-1]
    xp = F.pad(x.reshape(1, -1, x.shape[2]), ((k - 1) // 2, k // 2))  # 'same', extra zero on the right
    y = F.conv1d(xp, Wb.reshape(-1, *Wb.shape[2:]), groups=B)
    return y.reshape(B, -1, y.shape[2])


@pytest.mark.parametrize("eq", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_modulated_conv_equals_per_sample_weights(eq, normalize, k):
    torch.manual_seed(0)
    layer = SynthesisLayer(
        c_in=12,
        c_out=10,
        kernel_size=k,
        w_dim=8,
        up_factor=2,
        down_factor=2,
        up_cutoff=0.2,
        down_cutoff=0.25,
        equalized_lr=eq,
        normalize=normalize,
    ).eval()
    layer.norm_ema.fill_(1.7)
    x, w = torch.randn(5, 12, 7), torch.randn(5, 8)
    s = layer.affine(w)
    xin = x if eq else x * layer.norm_ema.rsqrt()
    torch.testing.assert_close(
        layer._modulated_conv(xin, s), reference_modulated_conv(layer, x, w), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("up,down,fc", [(2, 2, 0.2), (4, 2, 0.3), (1, 2, "critical"), (1, 1, "critical")])
def test_resampler_matches_zero_insertion_and_depthwise_filter(up, down, fc):
    torch.manual_seed(0)
    r = Resampler(up, down, fc, fc)
    x = torch.randn(3, 5, 9)
    C = x.shape[1]
    z = torch.zeros(3, C, 9 * up)
    z[..., ::up] = x
    h = r.up_lpf_filter
    expect_up = F.conv1d(z, h.expand(C, 1, -1), padding=h.numel() // 2, groups=C)
    torch.testing.assert_close(r.up(x), expect_up)
    h = r.down_lpf_filter
    expect_down = F.conv1d(x, h.expand(C, 1, -1), padding=h.numel() // 2, groups=C)[..., ::down]
    torch.testing.assert_close(r.down(x), expect_down)


def test_layer_specs_follow_seq_len_and_generator_shapes():
    cfg = parse_config(["rp_w_cfg.seq_len=32"])
    assert [s[2] for s in cfg.rp_w_cfg.layer_specs] == [4.0] * 5 + [8.0] * 4 + [16.0] * 3 + [32] * 2
    cfg = tiny_cfg()
    g = Generator(cfg.rp_w_cfg).eval()
    z = torch.randn(4, 8)
    with torch.no_grad():
        assert g(z).shape == (4, 8, 6)
        assert g.forward_w(g.W(z)).shape == (4, 8, 6)
        assert g.forward_w(g.W(z)[:, None].expand(4, g.n_layers + 2, 8)).shape == (4, 8, 6)
    with pytest.raises(ValueError, match=r"\(B, 6, 8\)"):
        g.forward_w(torch.randn(4, 5, 8))
    d = Discriminator.from_config(cfg)
    assert d(torch.randn(4, 8, 6)).shape == (4, 1)


def test_minibatch_std_batch_not_divisible_is_a_clear_error():
    with pytest.raises(ValueError, match=r"batch size \(6\).*group size \(4\)"):
        minibatch_std(torch.randn(6, 3, 5))
    y = minibatch_std(torch.randn(8, 3, 5))
    assert y.shape == (8, 4, 5)
    torch.testing.assert_close(y[:4, 3], y[4:, 3])  # strided groups: b and b+n share a group statistic


def test_train_mode_without_update_ema_warns_once_and_keeps_ema():
    g = Generator(tiny_cfg().rp_w_cfg).train()
    before = {k: v.clone() for k, v in g.state_dict().items() if k.endswith("norm_ema")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with torch.no_grad():
            g(torch.randn(4, 8))
            g(torch.randn(4, 8))
    assert len([c for c in caught if "update_ema" in str(c.message)]) == 1
    assert all(torch.equal(g.state_dict()[k], v) for k, v in before.items())


def test_calibrate_norm_ema_gives_unit_power_inputs():
    g = Generator(tiny_cfg().rp_w_cfg).train()
    z = torch.randn(16, 8)
    g.calibrate_norm_ema(z)
    assert g.training
    powers = []
    hooks = [
        m.register_forward_pre_hook(lambda m, a: powers.append(a[0].square().mean() / m.norm_ema))
        for m in [*g.layers, g.head]
    ]
    with torch.no_grad():
        g.eval()(z)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(torch.stack(powers), torch.ones(len(powers)))


def test_parameters_have_plain_strides():
    """Every parameter owns dense row-major storage (DeepSpeed views parameters as bytes to broadcast them)."""
    cfg = tiny_cfg("rp_w_cfg.use_sg3_ff=True")
    for model in (Generator.from_config(cfg), Discriminator.from_config(cfg)):
        for name, p in model.named_parameters():
            assert p.stride() == torch.empty(p.shape).stride(), name
