"""density.metrics and evaluate.py against independent numpy/scipy computations (reference notes 20, 35-39)."""

import json
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import cdist

from density import metrics as M
from density.evaluation import evaluate


def _spd(c, seed):
    """Random orthogonal Q and positive eigenvalues a, b: S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(c, c)))
    a, b = rng.uniform(0.1, 3.0, c), rng.uniform(0.1, 3.0, c)
    return q, a, b


# ---------------------------------------------------------------- Fréchet distance


def test_feature_statistics_float32_unbiased():
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 7) + 2
    mu, sigma = M.feature_statistics(x)
    assert mu.dtype == sigma.dtype == torch.float32 and sigma.shape == (6, 6)
    np.testing.assert_allclose(mu.numpy(), x.numpy().astype(np.float64).mean(0), rtol=1e-5, atol=1e-5)
    # float32 round-off is relative to the largest entries (variances up to 36), not to a near-zero covariance
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.numpy().astype(np.float64), rowvar=False), rtol=1e-4, atol=1e-4)


def test_frechet_distance_commuting_gaussians_closed_form():
    q, a, b = _spd(8, 0)
    mu1, mu2 = np.arange(8.0), np.arange(8.0)[::-1] * 0.5
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = M.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert isinstance(got, float) and got == pytest.approx(expected, rel=1e-9)
    as_torch = [torch.tensor(v, dtype=torch.float32) for v in (mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)]
    assert M.frechet_distance(*as_torch) == pytest.approx(expected, rel=1e-5)
    assert M.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu1, q @ np.diag(a) @ q.T) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_retries_with_eps_when_sqrtm_not_finite(caplog):
    # [[0, 1], [0, 0]] has no square root (sqrtm gives inf); the retry product is [[a, 1+e], [0, a]] with
    # a = e (1 + e), whose root [[sqrt a, (1+e) / (2 sqrt a)], [0, sqrt a]] has trace 2 sqrt(a).
    eps = M.SQRTM_EPS
    with caplog.at_level(logging.WARNING, logger="density.metrics"):
        got = M.frechet_distance(np.zeros(2), np.array([[0.0, 1.0], [0.0, 0.0]]), np.zeros(2), np.eye(2))
    assert "not finite" in caplog.text
    assert got == pytest.approx(0 + 2 - 4 * math.sqrt(eps * (1 + eps)), rel=1e-9)


def test_frechet_distance_complex_root(caplog):
    with caplog.at_level(logging.WARNING, logger="density.metrics"):
        assert math.isnan(M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-1.0, 1.0])))
    assert "imaginary" in caplog.text
    # an imaginary part of 1e-4 on the diagonal is round-off: real part taken, diag(2, 0)
    assert M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([4.0, -1e-8])) == pytest.approx(
        2 + (4 - 1e-8) - 2 * 2, rel=1e-12
    )


def test_fad_and_fid_match_numpy_statistics():
    g = torch.Generator().manual_seed(0)
    fake = torch.randn(400, 5, generator=g) * 1.5 + 0.3
    real = torch.randn(500, 5, generator=g) @ torch.randn(5, 5, generator=g)
    f64, r64 = fake.double().numpy(), real.double().numpy()
    expected = M.frechet_distance(f64.mean(0), np.cov(f64, rowvar=False), r64.mean(0), np.cov(r64, rowvar=False))
    assert M.fad(fake, *M.feature_statistics(real)) == pytest.approx(expected, rel=1e-4)
    assert M.fid(fake.numpy(), real) == pytest.approx(expected, rel=1e-4)
    assert M.fad(fake.view(40, 10, 5), *M.feature_statistics(real)) == pytest.approx(expected, rel=1e-4)
    assert M.fid(real, real) == pytest.approx(0, abs=1e-4)


def test_non_finite_features_are_named_not_passed_to_sqrtm():
    """A NaN row (a diverged generator's clip) used to reach scipy's sqrtm: 'Internal error in sqrtm: -102'."""
    gen, train = torch.randn(50, 4), torch.randn(60, 4)
    gen[7, 2] = float("nan")
    gen[9, 0] = float("inf")
    with pytest.raises(ValueError, match=r"gen: 2 of 50 rows hold NaN or inf \(first: row 7\)"):
        M.fid(gen, train)
    log_probs = torch.log_softmax(torch.randn(50, 10), 1)
    log_probs[3] = float("nan")
    with pytest.raises(ValueError, match=r"log_probs: 1 of 50 rows hold NaN or inf \(first: row 3\)"):
        M.inception_score(log_probs)


def test_fid_of_shifted_gaussian_samples_is_squared_shift():
    g = torch.Generator().manual_seed(1)
    shift = torch.tensor([3.0, 0.0, -4.0])
    a, b = torch.randn(20000, 3, generator=g), torch.randn(20000, 3, generator=g) + shift
    assert M.fid(a, b) == pytest.approx(25.0, rel=0.01)


# ---------------------------------------------------------------- ApproxKL


def _np_hist(x):
    edges = np.append(np.linspace(-1.2, 1.2, 200), 2.2)
    return np.histogram(np.clip(x.double().numpy().ravel(), -1.2, 1.2), bins=edges)[0]


def test_approx_kl_histogram_matches_numpy_and_value():
    g = torch.Generator().manual_seed(0)
    real = [torch.randn(4, 8, 16, generator=g) * 0.5 for _ in range(2)]
    fake = [torch.randn(4, 8, 16, generator=g) * 0.8 + 0.2 for _ in range(2)]
    fake[0][0, 0, :4] = torch.tensor([-5.0, 5.0, 1.2, -1.2])  # clamped into the first and last bins
    kl, kl_sum = M.ApproxKL(), M.ApproxKL(reduction="sum")
    for r, f in zip(real, fake):
        kl.accumulate(r, f)
        kl_sum.accumulate(r, f)
    hr, hf = sum(_np_hist(r) for r in real), sum(_np_hist(f) for f in fake)
    np.testing.assert_array_equal(kl.real_counts.numpy(), hr)
    np.testing.assert_array_equal(kl.fake_counts.numpy(), hf)
    qr, qf = np.maximum(hr / hr.sum(), 1e-7), np.maximum(hf / hf.sum(), 1e-7)
    expected = np.sum(qf * np.log(qf / qr))
    assert kl.compute() == pytest.approx(expected / 200, rel=1e-9)
    assert kl_sum.compute() == pytest.approx(expected, rel=1e-9)


def test_approx_kl_identical_data_is_zero_and_empty_is_an_error():
    x = torch.randn(3, 10, 7)
    kl = M.ApproxKL()
    kl.accumulate(x, x.clone())
    assert kl.compute() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(RuntimeError, match="accumulate"):
        M.ApproxKL().compute()


# ---------------------------------------------------------------- nearest-neighbour helpers


def test_closest_dist_pair_matches_cdist():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(30, 6, generator=g), torch.randn(5, 4, 6, generator=g)
    fake_nearest, real_nearest = M.closest_dist_pair(real, fake, generator=g)
    d = cdist(fake.reshape(-1, 6).numpy(), real.numpy(), metric="cosine")
    assert fake_nearest.dtype == real_nearest.dtype == torch.float32
    np.testing.assert_allclose(np.sort(fake_nearest.numpy()), np.sort(d.min(1)), atol=1e-5)
    np.testing.assert_allclose(np.sort(real_nearest.numpy()), np.sort(d.min(0)), atol=1e-5)
    fake_nearest, real_nearest = M.closest_dist_pair(real, fake, n1=7, n2=9, generator=g)
    assert real_nearest.shape == (7,) and fake_nearest.shape == (9,)


def _np_perc(real, fake, k, first_counted):
    """Reference formula written with numpy sorts over the full sets."""
    d_rr, d_ff, d_fr = (cdist(a, b, metric="cosine") for a, b in ((real, real), (fake, fake), (fake, real)))

    def share(own, cross):
        pooled = np.concatenate([np.sort(own, 1)[:, :k], np.sort(cross, 1)[:, :k]], 1)
        return np.mean((np.argsort(pooled, 1, kind="stable")[:, :k] >= first_counted).sum(1) / k)

    return share(d_rr, d_fr.T), share(d_ff, d_fr)


@pytest.mark.parametrize("exclude", [True, False])
def test_perc_closest_matches_numpy(exclude):
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(60, 5, generator=g), torch.randn(50, 5, generator=g) + 0.3
    got = M.perc_closest(real, fake, k=10, n=500, exclude_nearest_cross=exclude, generator=g)
    expected = _np_perc(real.double().numpy(), fake.double().numpy(), 10, 11 if exclude else 10)
    assert got == pytest.approx(expected, abs=1e-12)


def test_perc_closest_separated_clusters_and_quirk():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(80, 8, generator=g) * 0.1 + torch.eye(8)[0] * 5
    fake = torch.randn(80, 8, generator=g) * 0.1 + torch.eye(8)[1] * 5
    assert M.perc_closest(real, fake, k=20, n=500) == (0.0, 0.0)
    # near-duplicates: each real's twin is its 2nd-nearest pooled neighbour at pooled index k,
    # which the reference rule (index > k) never counts: exactly 1/k lower per point
    twins = real + torch.randn(80, 8, generator=g) * 1e-4
    ref = M.perc_closest(real, twins, k=20, n=500)
    fixed = M.perc_closest(real, twins, k=20, n=500, exclude_nearest_cross=False)
    assert fixed[0] - ref[0] == pytest.approx(1 / 20) and fixed[1] - ref[1] == pytest.approx(1 / 20)
    assert M.perc_closest(real[:5], fake, k=100, n=500) == (0.0, 0.0)  # k reduced to the 5 rows


def test_distance_heuristic_matches_cdist():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(2, 20, 6, generator=g), torch.randn(2, 20, 6, generator=g) + 0.5
    r, f = real.reshape(-1, 6).double().numpy(), fake.reshape(-1, 6).double().numpy()
    m_rr, m_rf, m_ff = (cdist(a, b, metric="cosine").mean() for a, b in ((r, r), (r, f), (f, f)))
    got = M.distance_heuristic(real, fake, n=75, generator=g)  # n >= 40 rows: I covers every row
    assert got.ndim == 0 and float(got) == pytest.approx((m_ff - m_rr) ** 2 + (m_rf - m_rr) ** 2, rel=1e-4)
    assert float(M.distance_heuristic(real, real.clone())) == pytest.approx(0, abs=1e-12)
    assert float(M.distance_heuristic(real, fake, n=10, generator=g)) > 0
    with pytest.raises(ValueError, match="same shape"):
        M.distance_heuristic(real, fake[:1])


def test_drift_matches_numpy():
    real, fake = torch.randn(4, 10, 3), torch.randn(4, 10, 3) * 2 + 1
    r, f = real.reshape(-1, 3).double().numpy(), fake.reshape(-1, 3).double().numpy()
    mean_drift, var_drift = M.drift(real, fake)
    assert float(mean_drift) == pytest.approx(np.mean((f.mean(0) - r.mean(0)) ** 2), rel=1e-5)
    assert float(var_drift) == pytest.approx(np.mean((f.std(0, ddof=1) - r.std(0, ddof=1)) ** 2), rel=1e-5)


# ---------------------------------------------------------------- evaluation metrics


def test_inception_score_uniform_and_one_hot():
    k = 10
    assert M.inception_score(torch.full((100, k), -math.log(k))) == pytest.approx(1.0, abs=1e-12)
    labels = np.arange(10000) % k
    log_probs = torch.log(torch.nn.functional.one_hot(torch.as_tensor(labels), k).double())  # -inf off-class
    perm = np.random.RandomState(0).permutation(10000)
    h1, h2 = labels[perm[:5000]], labels[perm[5000:]]
    freq = np.bincount(h2, minlength=k) / 5000
    assert M.inception_score(log_probs) == pytest.approx(np.exp(np.mean(-np.log(freq[h1]))), rel=1e-12)
    assert M.inception_score(log_probs) == pytest.approx(k, rel=0.02)


def test_modified_inception_score():
    assert M.modified_inception_score(np.full((7, 4), 0.25)) == pytest.approx(1.0, abs=1e-12)
    probs = np.array([[0.8, 0.2], [0.2, 0.8], [0.5, 0.5]]) * 3  # entropy renormalises rows
    rng = np.random.RandomState(123)
    kls = []
    for _ in range(10_000):
        a, b = rng.randint(3), rng.randint(3)
        p, q = probs[a] / probs[a].sum(), probs[b] / probs[b].sum()
        kls.append(sum(p * np.log(p / q)))
    assert M.modified_inception_score(torch.tensor(probs)) == pytest.approx(np.exp(np.mean(kls)), rel=1e-12)


def test_am_score():
    k = 5
    uniform = np.full((20, k), 1 / k)
    assert M.am_score(uniform, uniform) == pytest.approx(math.log(k), rel=1e-12)
    eps = 0.1
    gen = np.full((k, k), eps / k) + np.eye(k) * (1 - eps)  # one smoothed one-hot per class
    train = np.zeros((10, k))
    train[:, 0] = 1.0  # training set of class 0 only
    row_entropy = -((1 - eps + eps / k) * math.log(1 - eps + eps / k) + (k - 1) * eps / k * math.log(eps / k))
    kl = math.log(1 / (1 / k))  # mean gen is uniform: KL(e_0 || uniform) = log k
    assert M.am_score(torch.tensor(train), torch.tensor(gen)) == pytest.approx(row_entropy + kl, rel=1e-12)


class _FixedBins:
    """Stand-in K-means: bin = first feature (an integer)."""

    def __init__(self, n_clusters):
        self.n_clusters = n_clusters

    def predict(self, x):
        return x[:, 0].astype(int)


def _binned(counts):
    return np.repeat(np.arange(len(counts)), counts)[:, None].astype(np.float64)


def test_ndb_two_proportion_z_test_by_hand():
    real = _binned([50, 50, 0])
    bins = _FixedBins(3)
    # 70/30 vs 50/50: p = 0.6, se = sqrt(0.24 * 0.02), z = 2.89 -> both bins distinct; empty bin 2 is not
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.ndb(real, _binned([70, 30, 0]), kmeans=bins) == pytest.approx(2 / 3)
        assert M.ndb(real, _binned([70, 30, 0]), kmeans=bins, proportion=False) == 2
    # 55/45: z = 0.05 / sqrt(0.2475 * 0.02) = 0.71 -> p = 0.48, not distinct
    assert M.ndb(real, _binned([55, 45, 0]), kmeans=bins, proportion=False) == 0
    # an unbalanced case checked against scipy's normal tail directly
    n1, n2, c1, c2 = 100, 60, 30, 28
    p = (c1 + c2) / (n1 + n2)
    z = (c1 / n1 - c2 / n2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    expected = int(2 * stats.norm.sf(abs(z)) < 0.05) * 2  # both bins of a two-bin split share |z|
    assert M.ndb(_binned([c1, n1 - c1]), _binned([c2, n2 - c2]), kmeans=_FixedBins(2), proportion=False) == expected


def test_ndb_identical_vs_shifted_data():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(600, 4)).astype(np.float32)
    assert M.ndb(real, real.copy(), k=10) == 0.0
    shifted = real + np.float32(2.5)
    assert M.ndb(torch.tensor(real), torch.tensor(shifted), k=10) >= 0.7
    with pytest.raises(ValueError, match="lower k"):
        M.ndb(real[:5], real, k=10)


def test_linear_separability_separable_noise_and_trim():
    rng = np.random.default_rng(0)
    k, n = 3, 150
    labels = np.arange(n) % k
    logits = np.eye(k)[labels] * 30.0  # confident classifier
    latents = np.eye(k)[labels] * 4 + rng.normal(size=(n, k)) * 0.3  # linearly separable by class
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    h_mean = stats.entropy(probs.mean(0))
    h_labels = stats.entropy(np.bincount(labels) / n)  # MI when the SVC reproduces every label
    assert M.linear_separability(logits, latents, trim=1.0) == pytest.approx(np.exp(h_mean - h_labels), rel=1e-6)
    noise = rng.normal(size=(n, k))
    assert M.linear_separability(logits, noise, trim=1.0) > 2.0  # labels unrelated to latents
    # trim 0.5 keeps the confident separable half and drops 150 uncertain rows with random latents
    mixed_logits = np.concatenate([logits, rng.normal(size=(n, k)) * 0.01])
    mixed_latents = np.concatenate([latents, rng.normal(size=(n, k)) * 4])
    assert M.linear_separability(mixed_logits, mixed_latents, trim=0.5) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="one class"):
        M.linear_separability(np.tile([5.0, 0.0], (10, 1)), rng.normal(size=(10, 2)))


# ---------------------------------------------------------------- evaluate.py


def test_evaluate_cli_writes_json(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    gen, real = torch.randn(120, 4, generator=g), torch.randn(150, 4, generator=g) + 0.2
    gen_logits, train_logits = torch.randn(120, 3, generator=g) * 3, torch.randn(150, 3, generator=g)
    latents = torch.randn(120, 5, generator=g)
    torch.save(gen, tmp_path / "gen.pt")
    np.save(tmp_path / "real.npy", real.numpy())
    torch.save(gen_logits, tmp_path / "gl.pt")
    torch.save(train_logits, tmp_path / "tl.pt")
    torch.save(latents, tmp_path / "z.pt")
    out = tmp_path / "sub" / "m.json"
    evaluate.main(
        [
            "--gen_feats",
            str(tmp_path / "gen.pt"),
            "--real_feats",
            str(tmp_path / "real.npy"),
            "--gen_logits",
            str(tmp_path / "gl.pt"),
            "--train_logits",
            str(tmp_path / "tl.pt"),
            "--latents",
            str(tmp_path / "z.pt"),
            "--ndb_k",
            "5",
            "--json",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    gp, tp = gen_logits.softmax(1), train_logits.softmax(1)
    assert result == pytest.approx(
        {
            "fid": M.fid(gen, real),
            "ndb_over_k": M.ndb(real, gen, k=5),
            "inception_score": M.inception_score(gen_logits.log_softmax(1)),
            "modified_inception_score": M.modified_inception_score(gp),
            "am_score": M.am_score(tp, gp),
            "linear_separability": M.linear_separability(gen_logits, latents, trim=0.5),
        },
        rel=1e-6,
    )
    assert "fid:" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["m.json"]  # no temporary file left


def test_evaluate_cli_errors_and_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--help"])
    assert e.value.code == 0 and "--gen_feats" in capsys.readouterr().out
    torch.save({"feats": torch.zeros(3, 2)}, tmp_path / "d.pt")
    with pytest.raises(SystemExit, match="d.pt.*single tensor"):
        evaluate.main(["--gen_feats", str(tmp_path / "d.pt"), "--real_feats", str(tmp_path / "d.pt")])
    with pytest.raises(SystemExit, match="missing.pt"):
        evaluate.main(["--gen_logits", str(tmp_path / "missing.pt")])
    (tmp_path / "random.pt").write_bytes(bytes(range(256)))  # torch.load raised IndexError on such bytes
    with pytest.raises(SystemExit, match=r"random\.pt"):
        evaluate.main(["--gen_logits", str(tmp_path / "random.pt")])
    with pytest.raises(SystemExit, match=f"cannot load {tmp_path}"):  # a folder, not a file
        evaluate.main(["--gen_logits", str(tmp_path)])
    torch.save(torch.zeros(4, 3), tmp_path / "l.pt")
    torch.save(torch.zeros(5, 2), tmp_path / "z.pt")
    with pytest.raises(SystemExit, match="4 logits rows but 5 latents rows"):
        evaluate.main(["--gen_logits", str(tmp_path / "l.pt"), "--latents", str(tmp_path / "z.pt")])
    with pytest.raises(SystemExit):
        evaluate.main(["--latents", str(tmp_path / "d.pt")])  # nothing computable
    assert "needs" in capsys.readouterr().err


def test_training_helpers_ignore_autocast_and_half_inputs():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(2, 30, 8, generator=g), torch.randn(2, 30, 8, generator=g) * 1.3
    plain = (M.distance_heuristic(real, fake, generator=torch.Generator().manual_seed(1)), *M.drift(real, fake))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = (M.distance_heuristic(real, fake, generator=torch.Generator().manual_seed(1)), *M.drift(real, fake))
    for a, b in zip(plain, cast):
        assert b.dtype == torch.float32 and float(b) == pytest.approx(float(a), rel=1e-6)
    half = fake.half()
    mu, sigma = M.feature_statistics(real)
    assert M.fad(half, mu, sigma) == pytest.approx(M.fad(half.float(), mu, sigma), rel=1e-6)
