"""Metrics of ASGAN (reference notes 20, 35-39): Fréchet distance, training-time helpers and evaluation metrics.

Training-time helpers take torch tensors of frames, (N, C) or (B, L, C) (flattened to (B*L, C)).
`distance_heuristic` and `drift` return detached 0-dim tensors (logged every step, no host sync);
everything else returns Python floats or CPU tensors. Evaluation metrics take tensors or numpy arrays.

Reference quirks kept as defaults (reference notes 37, 39), each with an option where a fix is useful:
- ApproxKL divides KL(fake || real) by the 200 bins (`reduction="batchmean"`; `"sum"` gives the KL).
- perc_closest counts neighbour indices > k, so the nearest cross-set neighbour (index k) never counts
  (`exclude_nearest_cross=True`; False counts indices >= k).
- NDB pins K-means `n_init=10` (scikit-learn's default before 1.4, when the reference was written; newer
  versions default to 'auto' = 1 run for k-means++, which changes the clusters). A bin with zero pooled
  proportion (empty in both sets, possible with a precomputed K-means) has p1 = p2 and is not distinct,
  instead of the reference's division by zero.
"""

import logging
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg, special, stats

log = logging.getLogger(__name__)

SQRTM_EPS = 1e-6  # diagonal offset for the retry when sqrtm(S1 S2) is not finite (singular product)
IMAG_ATOL = 1e-3  # largest |imag| on diag(sqrtm) still treated as round-off; larger means no real root
COS_EPS = 1e-8  # norm floor for cosine distances; a zero frame (silence padding) gets distance 1
KL_LO, KL_HI, KL_BINS = -1.2, 1.2, 200  # ApproxKL: bin left edges linspace(LO, HI, BINS)
KL_LAST_EDGE = 2.2  # right edge of the last bin [1.2, 2.2] (clamped values never exceed 1.2)
KL_FLOOR = 1e-7  # probability floor before the logs
IS_SEED = 0  # RandomState seed of the inception-score split
MIS_SEED, MIS_DRAWS = 123, 10_000  # modified IS: RandomState seed and number of random pairs
NDB_SEED = 0  # K-means random_state
NDB_N_INIT = 10  # K-means restarts: scikit-learn's default before 1.4 (reference note 37)
NDB_ALPHA = 0.05  # two-sided significance level of the per-bin two-proportion z-test


def _frames(x, name):
    """Detached (N, C) view of frames given as (N, C) or (..., C)."""
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(
            f"{name}: expected a tensor of frames (N, C) or (B, L, C), got {type(x).__name__} "
            f"of shape {tuple(getattr(x, 'shape', ()))}"
        )
    return x.detach().reshape(-1, x.shape[-1])


def _matrix(x, name, log_probs=False):
    """2-D float numpy array (float16 widened to float32) from a tensor or array; NaN or inf entries are an error
    (-inf is allowed in log_probs: a probability of 0)."""
    if torch.is_tensor(x):
        x = x.detach().cpu()
        x = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).numpy()
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name}: expected a numeric (N, C) array, got dtype {x.dtype} shape {x.shape}")
    bad = np.flatnonzero(~(np.isfinite(x) | (log_probs & np.isneginf(x))).all(1))
    if len(bad):
        raise ValueError(
            f"{name}: {len(bad)} of {len(x)} rows hold NaN or inf (first: row {bad[0]}); for generated "
            "clips the generator or vocoder produced non-finite audio (a diverged checkpoint?)"
        )
    return x.astype(np.float32) if x.dtype == np.float16 else x


def cosine_distances(a, b):
    """1 - cos(a_i, b_j) for a (M, C), b (N, C) -> (M, N) float32, outside autocast."""
    with torch.autocast(a.device.type, enabled=False):
        a = F.normalize(a.float(), dim=1, eps=COS_EPS)
        b = F.normalize(b.float(), dim=1, eps=COS_EPS)
        return 1 - a @ b.T


# ---------------------------------------------------------------- Fréchet distance (§9.1)


def feature_statistics(x):
    """Mean (C,) and unbiased covariance (C, C), both float32, of real features x (N, C)."""
    x = _frames(x, "x").float()
    if x.shape[0] < 2:
        raise ValueError(f"feature_statistics needs at least 2 rows for a covariance, got {x.shape[0]}")
    return x.mean(0), torch.cov(x.T)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2) as a float (reference note 35); NaN if no real root."""
    mu1, sigma1, mu2, sigma2 = (_float64(v) for v in (mu1, sigma1, mu2, sigma2))
    c = mu1.shape[0]
    if mu1.shape != (c,) or mu2.shape != (c,) or sigma1.shape != (c, c) or sigma2.shape != (c, c):
        raise ValueError(
            f"frechet_distance: shape mismatch mu1 {mu1.shape} sigma1 {sigma1.shape} "
            f"mu2 {mu2.shape} sigma2 {sigma2.shape}"
        )
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        log.warning("frechet_distance: sqrtm(sigma1 sigma2) is not finite; adding %g to the diagonals", SQRTM_EPS)
        offset = np.eye(c) * SQRTM_EPS
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_ATOL):
            log.warning(
                "frechet_distance: sqrtm has imaginary diagonal parts up to %g; returning NaN",
                np.abs(np.diagonal(covmean).imag).max(),
            )
            return float("nan")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _float64(x):
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def _sqrtm(a):
    """scipy sqrtm; its accuracy warnings are dropped (the reference ignores the error estimate, reference note 35)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


def fad(fake_frames, real_mu, real_sigma):
    """Fréchet distance of fake frames (N, C) to real statistics: fake covariance in float64 cast to float32."""
    x = _frames(fake_frames, "fake_frames").float()
    if x.shape[0] < 2:
        raise ValueError(f"fad needs at least 2 fake frames for a covariance, got {x.shape[0]}")
    return frechet_distance(x.mean(0), torch.cov(x.T.double()).float(), real_mu, real_sigma)


def fid(gen, train):
    """FID between generated (N, C) and training (M, C) features: 9.1 with gen as the fake side."""
    gen, train = (torch.as_tensor(_matrix(v, n)) for v, n in ((gen, "gen"), (train, "train")))
    return fad(gen, *feature_statistics(train))


# ---------------------------------------------------------------- training-time helpers (§9.3, §5)


class ApproxKL:
    """Histogram KL(fake || real) of all feature values, accumulated over batches (reference note 39).

    200 bins with left edges linspace(-1.2, 1.2, 200) and last bin [1.2, 2.2]; values clamped to
    [-1.2, 1.2]. reduction="batchmean" (reference) divides the KL by 200; "sum" returns the KL itself.
    Counts live in `real_counts`, `fake_counts` (float64, CPU), bin edges in `edges` (201,).
    """

    def __init__(self, reduction="batchmean"):
        if reduction not in ("batchmean", "sum"):
            raise ValueError(f"ApproxKL reduction must be 'batchmean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        left = torch.linspace(KL_LO, KL_HI, KL_BINS, dtype=torch.float64)
        self.edges = torch.cat([left, torch.tensor([KL_LAST_EDGE], dtype=torch.float64)])
        self.real_counts = torch.zeros(KL_BINS, dtype=torch.float64)
        self.fake_counts = torch.zeros(KL_BINS, dtype=torch.float64)

    def _histogram(self, x):
        x = x.detach().flatten().double().clamp(KL_LO, KL_HI)
        idx = torch.bucketize(x, self.edges[1:-1].to(x.device), right=True)  # bin k = [e_k, e_k+1)
        return torch.bincount(idx, minlength=KL_BINS).cpu().double()

    def accumulate(self, real, fake):
        """Add every value of real and fake (any shapes) to the two histograms."""
        self.real_counts += self._histogram(real)
        self.fake_counts += self._histogram(fake)

    def compute(self):
        """KL(fake || real) of the normalised, 1e-7-floored histograms, / 200 for "batchmean"."""
        if self.real_counts.sum() == 0 or self.fake_counts.sum() == 0:
            raise RuntimeError("ApproxKL.compute called before accumulate saw real and fake values")
        q_real = (self.real_counts / self.real_counts.sum()).clamp_min(KL_FLOOR)
        q_fake = (self.fake_counts / self.fake_counts.sum()).clamp_min(KL_FLOOR)
        kl = (q_fake * (q_fake.log() - q_real.log())).sum()
        return float(kl / KL_BINS if self.reduction == "batchmean" else kl)


def _subset(x, n, generator):
    return x[torch.randperm(x.shape[0], generator=generator)[:n].to(x.device)]


def closest_dist_pair(real, fake, n1=1000, n2=1000, generator=None):
    """Nearest cosine distances between random subsets of <= n1 real and <= n2 fake frames, on CPU.

    Returns (fake_nearest (n_fake,), real_nearest (n_real,)) float32: for each fake row the distance to
    its nearest real, and for each real row the distance to its nearest fake.
    """
    real = _subset(_frames(real, "real"), n1, generator).cpu()
    fake = _subset(_frames(fake, "fake"), n2, generator).cpu()
    d = cosine_distances(fake, real)  # (n_fake, n_real)
    return d.min(1).values, d.min(0).values


def perc_closest(real, fake, k=100, n=500, exclude_nearest_cross=True, generator=None):
    """Share of cross-set points among each point's k nearest neighbours (reference note 39), subsets of <= n.

    For each real: pool its k nearest reals (itself included) and k nearest fakes, take the k smallest of
    the 2k distances and count those at pooled index > k (reference; index >= k if
    exclude_nearest_cross=False), / k. Returns (fake_closest_to_real, real_closest_to_fake): the means
    over reals and, symmetrically, over fakes. k is reduced to the smaller subset when fewer rows exist.
    """
    real = _subset(_frames(real, "real"), n, generator)
    fake = _subset(_frames(fake, "fake"), n, generator)
    k = min(k, real.shape[0], fake.shape[0])
    d_fr = cosine_distances(fake, real)  # (n_fake, n_real)
    near_rr = cosine_distances(real, real).topk(k, dim=1, largest=False).values
    near_ff = cosine_distances(fake, fake).topk(k, dim=1, largest=False).values
    near_rf = d_fr.topk(k, dim=0, largest=False).values.T  # (n_real, k) nearest fakes of each real
    near_fr = d_fr.topk(k, dim=1, largest=False).values  # (n_fake, k) nearest reals of each fake
    first_counted = k + 1 if exclude_nearest_cross else k

    def share(own, cross):
        idx = torch.cat([own, cross], dim=1).topk(k, dim=1, largest=False).indices
        return float((idx >= first_counted).sum(1).double().div(k).mean())

    return share(near_rr, near_rf), share(near_ff, near_fr)


def distance_heuristic(real_frames, fake_frames, n=75, generator=None):
    """(m_ff - m_rr)^2 + (m_rf - m_rr)^2 of mean cosine distances over <= n shared random rows (reference note 20)."""
    real, fake = _frames(real_frames, "real_frames"), _frames(fake_frames, "fake_frames")
    if real.shape != fake.shape:
        raise ValueError(
            f"distance_heuristic: real {tuple(real.shape)} and fake {tuple(fake.shape)} "
            "frames must have the same shape (the same rows index both)"
        )
    idx = torch.randperm(fake.shape[0], generator=generator)[:n].to(fake.device)
    real, fake = real[idx], fake[idx]
    m_rr = cosine_distances(real, real).mean()
    m_rf = cosine_distances(real, fake).mean()
    m_ff = cosine_distances(fake, fake).mean()
    return (m_ff - m_rr) ** 2 + (m_rf - m_rr) ** 2


def drift(real, fake):
    """(mean_drift, var_drift): MSE of per-feature means and of unbiased stds, fake vs real (reference note 20)."""
    real, fake = _frames(real, "real").float(), _frames(fake, "fake").float()
    with torch.autocast(real.device.type, enabled=False):
        mean_drift = F.mse_loss(fake.mean(0), real.mean(0))
        var_drift = F.mse_loss(fake.std(0), real.std(0))
    return mean_drift, var_drift


# ---------------------------------------------------------------- evaluation metrics (§9.2)


def inception_score(log_probs):
    """exp(mean_i KL(p_i || p_mean)): rows permuted by RandomState(0), p_i from the first half,
    p_mean from the second. log_probs (N, K)."""
    lp = _matrix(log_probs, "log_probs", log_probs=True).astype(np.float64)
    if lp.shape[0] < 2:
        raise ValueError(f"inception_score needs at least 2 rows, got {lp.shape[0]}")
    lp = lp[np.random.RandomState(IS_SEED).permutation(lp.shape[0])]
    h1, h2 = lp[: lp.shape[0] // 2], lp[lp.shape[0] // 2 :]
    log_mean = special.logsumexp(h2, axis=0) - np.log(h2.shape[0])
    p = np.exp(h1)
    with np.errstate(invalid="ignore"):  # p = 0 rows with log p = -inf contribute 0
        kl = np.where(p > 0, p * (h1 - log_mean), 0.0).sum(1)
    return float(np.exp(kl.mean()))


def modified_inception_score(probs):
    """exp(mean KL(p_a || p_b)) over 10,000 index pairs drawn with RandomState(123). probs (N, K)."""
    p = _matrix(probs, "probs").astype(np.float64)
    pairs = np.random.RandomState(MIS_SEED).randint(0, p.shape[0], size=(MIS_DRAWS, 2))
    kl = stats.entropy(p[pairs[:, 0]], p[pairs[:, 1]], axis=1)  # renormalises rows like the reference
    return float(np.exp(kl.mean()))


def am_score(train_probs, gen_probs):
    """Mean entropy of generated rows + KL(mean_train || mean_gen) (sum over classes), float64."""
    t = _matrix(train_probs, "train_probs").astype(np.float64)
    g = _matrix(gen_probs, "gen_probs").astype(np.float64)
    if t.shape[1] != g.shape[1]:
        raise ValueError(f"am_score: train has {t.shape[1]} classes but gen has {g.shape[1]}")
    entropy = -special.xlogy(g, g).sum(1).mean()
    return float(entropy + special.rel_entr(t.mean(0), g.mean(0)).sum())


def ndb(real, gen, k=50, proportion=True, kmeans=None, n_init=NDB_N_INIT):
    """Number of statistically different bins (reference note 37): NDB/K if proportion, else the count.

    K-means (k clusters, random_state 0, n_init pinned, see module doc) is fitted on real unless a fitted
    `kmeans` (anything with `n_clusters` and `predict`) is given, whose n_clusters then replaces k.
    A bin is distinct when the two-sided two-proportion z-test gives p < 0.05; a bin with zero pooled
    variance has equal proportions and is not distinct.
    """
    real, gen = _matrix(real, "real"), _matrix(gen, "gen")
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"ndb: real has {real.shape[1]} features but gen has {gen.shape[1]}")
    if kmeans is None:
        if real.shape[0] < k:
            raise ValueError(f"ndb: {real.shape[0]} real rows cannot make {k} clusters; lower k")
        from sklearn.cluster import KMeans  # imported here: only evaluation needs scikit-learn

        kmeans = KMeans(n_clusters=k, random_state=NDB_SEED, n_init=n_init).fit(real)
    n_bins = kmeans.n_clusters
    n1, n2 = real.shape[0], gen.shape[0]
    p1 = np.bincount(kmeans.predict(real), minlength=n_bins) / n1
    p2 = np.bincount(kmeans.predict(gen), minlength=n_bins) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = np.divide(p1 - p2, se, out=np.zeros(n_bins), where=se > 0)
    distinct = int((2 * stats.norm.cdf(-np.abs(z)) < NDB_ALPHA).sum())
    return distinct / n_bins if proportion else distinct


def linear_separability(logits, latents, svm_random_state=0, trim=0.5):
    """exp(H(mean p) - MI(SVC labels; classifier labels)) on the ceil(N*trim) most confident rows.

    logits (N, K) of a classifier on generated samples, latents (N, d) that produced them. A linear SVC
    (probability estimates, random_state svm_random_state) is fitted on the kept latents with labels
    argmax(softmax(logits)); needs scikit-learn < 1.11, where SVC's `probability` is removed. The reference
    leaves the trim to the caller (reference note 38); 0.5 keeps the more confident half, as in StyleGAN's
    linear separability.
    """
    from sklearn.metrics import mutual_info_score  # imported here: only evaluation needs scikit-learn
    from sklearn.svm import SVC

    probs = special.softmax(_matrix(logits, "logits").astype(np.float64), axis=1)
    z = _matrix(latents, "latents").astype(np.float64)
    if z.shape[0] != probs.shape[0]:
        raise ValueError(f"linear_separability: {probs.shape[0]} logits rows but {z.shape[0]} latents rows")
    if not 0 < trim <= 1:
        raise ValueError(f"linear_separability: trim must be in (0, 1], got {trim}")
    keep = np.argsort(-probs.max(1), kind="stable")[: math.ceil(probs.shape[0] * trim)]
    probs, z = probs[keep], z[keep]
    labels = probs.argmax(1)
    if np.unique(labels).size < 2:
        raise ValueError("linear_separability: the kept rows all have one class; pass more or more varied rows")
    with warnings.catch_warnings():  # libsvm's Platt probabilities (reference); deprecated in scikit-learn 1.9
        warnings.filterwarnings("ignore", message=".*probability.* parameter", category=FutureWarning)
        svc = SVC(kernel="linear", probability=True, random_state=svm_random_state).fit(z, labels)
    pred = svc.classes_[svc.predict_proba(z).argmax(1)]
    return float(np.exp(stats.entropy(probs.mean(0)) - mutual_info_score(labels, pred)))
