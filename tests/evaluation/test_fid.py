"""FID, KID and precision / recall against closed forms and pytorch-fid's own formula."""

import dataclasses

import numpy as np
import pytest
import scipy.linalg
from reference_models import import_pytorch_fid

from jaxdiff.errors import UserError
from jaxdiff.evaluation.fid import (
    FeatureStatistics,
    feature_statistics,
    fid,
    frechet_distance,
    kid,
    precision_recall,
)


def random_covariance(rng, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_a_set_against_itself_is_zero():
    rng = np.random.default_rng(0)
    for n, dim in [(500, 64), (100, 256)]:  # full rank, and rank-deficient (N < D)
        features = rng.normal(size=(n, dim)) * rng.uniform(0.1, 3, dim) + rng.normal(size=dim)
        stats = feature_statistics(features)
        assert fid(features, features) < 1e-8 * np.trace(stats.sigma)


def test_two_gaussians_match_the_closed_form():
    rng = np.random.default_rng(1)
    dim = 16
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    a_eig, b_eig = rng.uniform(0.2, 4, dim), rng.uniform(0.2, 4, dim)
    a = FeatureStatistics(rng.normal(size=dim), (rotation * a_eig) @ rotation.T)
    b = FeatureStatistics(rng.normal(size=dim), (rotation * b_eig) @ rotation.T)
    # Covariances with common eigenvectors: tr (AB)^(1/2) = sum sqrt(a_i b_i).
    closed = np.sum((a.mu - b.mu) ** 2) + np.sum((np.sqrt(a_eig) - np.sqrt(b_eig)) ** 2)
    np.testing.assert_allclose(frechet_distance(a, b), closed, rtol=1e-10)
    # Sampled features converge to it.
    x = rng.multivariate_normal(a.mu, a.sigma, size=40_000)
    y = rng.multivariate_normal(b.mu, b.sigma, size=40_000)
    np.testing.assert_allclose(fid(x, y), closed, rtol=0.02)


def test_equals_pytorch_fid_on_non_commuting_covariances():
    rng = np.random.default_rng(2)
    dim = 32
    a = FeatureStatistics(rng.normal(size=dim), random_covariance(rng, dim))
    b = FeatureStatistics(rng.normal(size=dim), random_covariance(rng, dim))
    reference = import_pytorch_fid().fid_score.calculate_frechet_distance(
        a.mu, a.sigma, b.mu, b.sigma
    )
    np.testing.assert_allclose(frechet_distance(a, b), reference, rtol=1e-8)
    wrong = frechet_distance(a, dataclasses.replace(b, sigma=1.05 * b.sigma))
    assert abs(wrong - reference) > 10 * 1e-8 * reference
    # The scipy sqrtm form of the trace, on its own.
    trace = np.trace(a.sigma + b.sigma - 2 * scipy.linalg.sqrtm(a.sigma @ b.sigma).real)
    np.testing.assert_allclose(frechet_distance(a, b), np.sum((a.mu - b.mu) ** 2) + trace)


def test_statistics_files_round_trip_and_are_checked(tmp_path):
    rng = np.random.default_rng(3)
    stats = feature_statistics(rng.normal(size=(50, 8)))
    stats.save(tmp_path / "ref.npz")
    loaded = FeatureStatistics.load(tmp_path / "ref.npz", dim=8)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert sorted(np.load(tmp_path / "ref.npz").files) == ["mu", "sigma"]  # pytorch-fid's keys
    stats.save(tmp_path / "ref")  # written at exactly the path given, with nothing left beside it
    np.testing.assert_array_equal(FeatureStatistics.load(tmp_path / "ref").mu, stats.mu)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "ref.npz"]
    with pytest.raises(UserError, match=r"have dimension 8, but the feature extractor gives 2048"):
        FeatureStatistics.load(tmp_path / "ref.npz", dim=2048)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3))
    with pytest.raises(UserError, match=r"lack sigma; they hold mu"):
        FeatureStatistics.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.zeros((3, 4)))
    with pytest.raises(UserError, match=r"have mu \(3,\) and sigma \(3, 4\)"):
        FeatureStatistics.load(tmp_path / "shape.npz")
    (tmp_path / "text.npz").write_text("not numpy")
    with pytest.raises(UserError, match=r"is not an .npz file of statistics"):
        FeatureStatistics.load(tmp_path / "text.npz")
    with pytest.raises(UserError, match=r"features have dimension 4, the reference statistics 8"):
        fid(rng.normal(size=(10, 4)), loaded)


def cubic_kernel_mean(p: tuple[float, float], q: tuple[float, float]) -> float:
    """E (xy + 1)^3 for independent x ~ N(p), y ~ N(q) in one dimension, from their moments."""

    def moments(mean, var):
        return mean, mean**2 + var, mean**3 + 3 * mean * var

    (p1, p2, p3), (q1, q2, q3) = moments(*p), moments(*q)
    return p3 * q3 + 3 * p2 * q2 + 3 * p1 * q1 + 1


@pytest.mark.parametrize("p, q", [((0.0, 1.0), (0.0, 1.0)), ((0.0, 1.0), (0.4, 1.5))])
def test_kid_is_unbiased(p, q):
    """Small subsets, where the biased (V-statistic) estimate is far off: KID's mean over many
    subsets equals the population MMD^2 within 4 standard errors."""
    rng = np.random.default_rng(4)
    x = rng.normal(p[0], np.sqrt(p[1]), size=(200_000, 1))
    y = rng.normal(q[0], np.sqrt(q[1]), size=(200_000, 1))
    population = cubic_kernel_mean(p, p) + cubic_kernel_mean(q, q) - 2 * cubic_kernel_mean(p, q)
    subsets, m = 20_000, 6
    mean, std = kid(x, y, subsets=subsets, subset_size=m, seed=5)
    error = std / np.sqrt(subsets)
    assert abs(mean - population) < 4 * error, (mean, population, error)
    # The V-statistic adds (E k(x, x) + E k(y, y) - E k(x, x') - E k(y, y')) / m.
    diagonal = (np.mean((x[:, 0] ** 2 + 1) ** 3) + np.mean((y[:, 0] ** 2 + 1) ** 3)) / m
    assert diagonal > 20 * error, "the test tells the unbiased estimate from the biased one"


def test_precision_and_recall():
    rng = np.random.default_rng(6)
    cluster_a = rng.normal(size=(300, 4))
    cluster_b = rng.normal(size=(300, 4)) + 50.0
    reference = np.concatenate([cluster_a, cluster_b])
    assert precision_recall(reference, reference) == (1.0, 1.0)
    assert precision_recall(reference + 1e3, reference) == (0.0, 0.0)
    # A generator of both modes, and one that drops a mode: as precise, recalls half as much.
    both = np.concatenate([rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 50.0])
    full_precision, full_recall = precision_recall(both, reference)
    precision, recall = precision_recall(rng.normal(size=(600, 4)), reference)
    assert full_precision > 0.85 and full_recall > 0.85
    assert abs(precision - full_precision) < 0.05
    np.testing.assert_allclose(recall, full_recall / 2, atol=0.03)


def test_precision_uses_the_kth_neighbour_radius():
    # Reference 0, 1, 3, 7 with k = 1: radii 1, 1, 2, 4 (to the nearest other point). 2.1 lies in
    # the ball of 3, 4.5 in that of 7, 11.5 in none (4.5 from 7).
    reference = np.array([[0.0], [1.0], [3.0], [7.0]])
    queries = np.array([[2.1], [4.5], [11.5]])
    assert precision_recall(queries, reference, k=1)[0] == pytest.approx(2 / 3)
    # k = 2: radii 3, 2, 3, 6, and 11.5 is inside the ball of 7.
    assert precision_recall(queries, reference, k=2)[0] == pytest.approx(1.0)


def test_bad_features():
    with pytest.raises(
        UserError, match=r"features must be \[N, D\] with N >= 2, got shape \(1, 3\)"
    ):
        fid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(UserError, match=r"features hold non-finite values"):
        kid(np.full((4, 2), np.nan), np.zeros((4, 2)))
    with pytest.raises(UserError, match=r"features have dimension 2, the reference 3"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
