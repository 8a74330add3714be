"""Augmenter and ADA (reference notes 21, 22): draw order, mixing semantics, p adaptation and state round trip."""

import random

import pytest
import torch

from density.augment import P_MAX, P_MIN, Augmenter


def spec_augment(real, fake, p, noise_std):
    """Reference note 21 written out literally: five torch flags, then noise, scale, swap draw, mixing."""
    B, L, _ = real.shape
    f = torch.rand(5) < p
    if f[0]:
        real = real + torch.randn_like(real) * noise_std
        fake = fake + torch.randn_like(fake) * noise_std
    if f[2]:
        eps = torch.randn(B, 2)
        real = real * (1 + 0.05 * eps[:, 0])[:, None, None]
        fake = fake * (1 + 0.05 * eps[:, 1])[:, None, None]
    if f[3]:
        torch.randint(0, L, (B,))
    if f[4]:
        real, fake = real.clone(), fake.clone()
        l1 = [random.randint(0, L // 2) for _ in range(B)]
        a1 = [random.randint(0, L - n - 1) for n in l1]
        a2 = [random.randint(0, L - n - 1) for n in l1]
        r = torch.rand(B, 2)
        l2 = [random.randint(0, L // 2) for _ in range(B)]
        a3 = [random.randint(0, L - n - 1) for n in l2]
        a4 = [random.randint(0, L - n - 1) for n in l2]
        det = fake.detach()
        for b in range(B):
            real[b, a1[b] : a1[b] + l1[b]] = (1 - r[b, 0]) * real[b, a1[b] : a1[b] + l1[b]] + r[b, 0] * det[
                b, a2[b] : a2[b] + l1[b]
            ]
            fake[b, a3[b] : a3[b] + l2[b]] = (1 - r[b, 1]) * real[b, a3[b] : a3[b] + l2[b]] + r[b, 1] * det[
                b, a4[b] : a4[b] + l2[b]
            ]
    return real, fake


@pytest.mark.parametrize("seed", range(6))
def test_matches_spec_draw_order_and_leaves_generators_alike(seed):
    real, fake = torch.randn(4, 10, 3), torch.randn(4, 10, 3)
    torch.manual_seed(seed), random.seed(seed)
    out = Augmenter(0.05, p=0.6)(real, fake)
    after = torch.rand(3), random.random()
    torch.manual_seed(seed), random.seed(seed)
    want = spec_augment(real, fake, 0.6, 0.05)
    assert torch.equal(torch.rand(3), after[0]) and random.random() == after[1]  # same draws consumed
    for o, w in zip(out, want):
        torch.testing.assert_close(o, w, rtol=0, atol=0)


def test_zero_probability_is_identity_and_inputs_untouched():
    real, fake = torch.randn(4, 8, 3), torch.randn(4, 8, 3)
    r0, f0 = real.clone(), fake.clone()
    out_r, out_f = Augmenter(0.05, p=P_MIN)(real, fake)
    assert torch.equal(out_r, r0) and torch.equal(out_f, f0)
    random.seed(1), torch.manual_seed(1)
    Augmenter(0.05, p=P_MAX)(real, fake)
    assert torch.equal(real, r0) and torch.equal(fake, f0)


def test_mixing_overwrites_one_fake_segment_without_gradient():
    random.seed(3), torch.manual_seed(3)
    B, L = 6, 12
    real = torch.randn(B, L, 2)
    fake_in = torch.randn(B, L, 2, requires_grad=True)
    _, fake = Augmenter._mix(real, fake_in * 1.0)
    fake.sum().backward()
    grad = fake_in.grad[..., 0]
    for b in range(B):
        zero = (grad[b] == 0).nonzero().flatten()
        assert len(zero) <= L // 2
        if len(zero):
            assert torch.equal(zero, torch.arange(zero[0], zero[0] + len(zero)))  # one contiguous segment
        keep = grad[b] == 1
        assert torch.equal(fake[b, keep], fake_in[b, keep])


@pytest.mark.parametrize(
    "ratio, dp", [(1.0, 0.05), (0.99, 0.05), (0.98, 0.005), (0.8, 0.005), (0.5, -0.005), (0.6, 0.0)]
)
def test_ada_update_rule(ratio, dp):
    """r_t = mean sign(D(real)) over 6 D phases; > 0.98: +0.05, > 0.6: +0.005, < 0.6: -0.005, 0.6: unchanged."""
    aug = Augmenter(0.05, p=0.2)
    n_pos = round((1 + ratio) / 2 * 200)  # 200 outputs, n_pos positive and the rest negative: mean sign = ratio
    d_real = torch.tensor([1.0] * n_pos + [-1.0] * (200 - n_pos))[:, None]
    for _ in range(6):
        assert aug.p == 0.2
        aug.accumulate(d_real)
    assert aug.r_t == pytest.approx(ratio)
    assert aug.p == pytest.approx(0.2 + dp, abs=1e-12)
    assert aug.n_acc == 0 and aug.acc.sum() == 0


def test_ada_p_is_clipped_and_all_sum_called_on_update():
    calls = []
    aug = Augmenter(0.05, p=P_MAX - 0.01)
    for _ in range(12):
        aug.accumulate(torch.ones(4, 1), all_sum=lambda t: calls.append(t.clone()))
    assert aug.p == P_MAX
    assert len(calls) == 2 and calls[0].tolist() == [24.0, 24.0]
    aug = Augmenter(0.05, p=0.001)
    for _ in range(6):
        aug.accumulate(-torch.ones(4, 1))
    assert aug.p == P_MIN


def test_state_dict_round_trip_mid_accumulation():
    a, b = Augmenter(0.05, p=0.3), Augmenter(0.05)
    d_real = torch.tensor([[1.0], [1.0], [-1.0], [1.0]])
    for _ in range(4):
        a.accumulate(d_real)
    b.load_state_dict(a.state_dict())
    for aug in (a, b):
        for _ in range(2):
            aug.accumulate(d_real)
    assert a.state_dict() == b.state_dict() and a.p == pytest.approx(0.3 - 0.005) == b.p  # mean sign 0.5 < 0.6
