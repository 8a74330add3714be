"""The generator's inference cache (density/models.py `inference_cached`): weight-only work done once in eval mode
without autograd, outputs bit-identical to recomputing it, and recomputed after anything that changes the weights."""

import copy
import pickle

import pytest
import torch
from helpers import tiny_cfg

from density.gan.training import update_ema
from density.models import Generator, Resampler, SynthesisLayer, inference_cache

SPECS = [[32, 3, 2.0], [24, 3, 4.0], [16, 3, 8.0], [16, 3, 16.0]]  # four synthesis layers: fast


def make_g(seed=0):
    torch.manual_seed(seed)
    cfg = tiny_cfg()
    cfg.rp_w_cfg.layer_specs = SPECS
    g = Generator(cfg.rp_w_cfg).eval()
    g.calibrate_norm_ema(torch.randn(32, g.z_dim))
    return g


def uncached(g, z):
    with torch.no_grad(), inference_cache(False):
        return g(z)


def cached(g, z):
    with torch.no_grad():
        return g(z)


@pytest.fixture
def counts(monkeypatch):
    """How often the demodulated conv weights and the resampling matrices are computed."""
    n = {"conv": 0, "matrix": 0}
    conv_weight, filter_matrix = SynthesisLayer._conv_weight, Resampler.filter_matrix

    def counted_conv_weight(self, dtype):
        n["conv"] += 1
        return conv_weight(self, dtype)

    def counted_filter_matrix(h, length, up=1, down=1):
        n["matrix"] += 1
        return filter_matrix(h, length, up, down)

    monkeypatch.setattr(SynthesisLayer, "_conv_weight", counted_conv_weight)
    monkeypatch.setattr(Resampler, "filter_matrix", staticmethod(counted_filter_matrix))
    return n


def test_cached_outputs_are_bit_identical_and_the_work_is_done_once(counts):
    g, z = make_g(), torch.randn(3, 16)
    counts.update(conv=0, matrix=0)
    ref = uncached(g, z)
    assert counts == {"conv": g.n_layers + 1, "matrix": 2 * g.n_layers}  # every call without the cache
    assert torch.equal(cached(g, z), ref)
    done = dict(counts)
    assert torch.equal(cached(g, z), ref)
    with torch.inference_mode():
        assert torch.equal(g(z), ref)
    assert counts == done  # nothing recomputed once cached


def test_per_layer_w_and_batch_sizes_share_the_cache(counts):
    g = make_g()
    z = torch.randn(5, 16)
    counts.update(conv=0, matrix=0)
    ws = g.W(z).detach()[:, None].repeat(1, g.n_layers + 2, 1)
    ws[:, 4:] = g.W(torch.randn(5, 16)).detach()[:, None]
    with torch.no_grad():
        g.forward_w(ws[:1])
        before = dict(counts)
        out = g.forward_w(ws)
    assert counts == before
    with torch.no_grad(), inference_cache(False):
        assert torch.equal(out, g.forward_w(ws))


def test_no_cache_with_autograd_or_in_training_mode(counts):
    g, z = make_g(), torch.randn(2, 16)
    counts.update(conv=0, matrix=0)
    g(z)
    g(z)
    assert counts["conv"] == 2 * (g.n_layers + 1)
    g.train()
    with torch.no_grad():
        g(z, update_ema=True)
        g(z, update_ema=True)
    assert counts["conv"] == 4 * (g.n_layers + 1)
    with torch.inference_mode(False):
        z_grad = z.clone().requires_grad_(True)
        g.eval()(z_grad).sum().backward()  # gradients still flow: no cached (inference) tensor enters the graph
    assert z_grad.grad is not None and z_grad.grad.abs().sum() > 0


def test_cache_is_not_in_the_state_dict_and_not_copied_or_pickled():
    g, z = make_g(), torch.randn(2, 16)
    keys = list(g.state_dict())
    cached(g, z)
    assert list(g.state_dict()) == keys == list(make_g().state_dict())
    for twin in (copy.deepcopy(g), pickle.loads(pickle.dumps(g))):  # the cache's weak references would not pickle
        assert torch.equal(cached(twin, z), cached(g, z))


def change_and_compare(g, change):
    """Fill the cache, change the generator with `change(g)`, then: the cached output equals the uncached one and
    differs from the output before the change (so a stale cache would have been caught)."""
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    before = cached(g, z)
    change(g)
    p = next(g.parameters())
    z = z.to(p.device, p.dtype)
    after = cached(g, z)
    assert not torch.equal(after.float().cpu(), before), "the change did not change the output"
    assert torch.equal(after, uncached(g, z))


def optimiser_step(**options):
    def step(g):
        opt = torch.optim.Adam(g.parameters(), lr=1e-2, **options)
        g(torch.randn(4, 16)).square().mean().backward()  # eval mode, autograd on: the cache is not used
        opt.step()

    return step


@pytest.mark.parametrize(
    "options", [{}, {"foreach": True}, {"fused": True}], ids=["for-loop", "foreach", "fused (no version bump)"]
)
def test_optimiser_step_invalidates(options):
    change_and_compare(make_g(), optimiser_step(**options))


def test_in_place_ema_update_invalidates():
    other = make_g(seed=1)
    change_and_compare(make_g(), lambda g: update_ema(g, other, 0.5))


def test_load_state_dict_invalidates():
    other = make_g(seed=1).state_dict()
    change_and_compare(make_g(), lambda g: g.load_state_dict(other))


def test_load_state_dict_assign_invalidates():
    other = make_g(seed=1).state_dict()
    change_and_compare(make_g(), lambda g: g.load_state_dict(other, assign=True))


def test_to_another_dtype_invalidates():
    change_and_compare(make_g(), lambda g: g.to(torch.float64))


def test_to_and_back_then_change_in_place_invalidates():
    def there_and_back_then_scale(g):
        g.to(torch.float64).to(torch.float32)
        with torch.no_grad():
            g.layers[0].conv.weight.mul_(3)
            g.W.fcs[0].weight.mul_(2)

    change_and_compare(make_g(), there_and_back_then_scale)


def test_resampling_filter_change_invalidates():
    def new_filters(g):
        with torch.no_grad():
            for layer in g.layers:
                layer.resampler.up_lpf_filter.mul_(1.5)

    change_and_compare(make_g(), new_filters)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_another_device_invalidates():
    change_and_compare(make_g(), lambda g: g.cuda())
