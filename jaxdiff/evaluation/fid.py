"""Distances between image sets in a feature space: FID, KID, precision and recall.

- FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two feature sets,
  `|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`. The trace of the matrix square root is taken as
  the sum of square roots of the eigenvalues of `S1^(1/2) S2 S1^(1/2)` (symmetric, positive
  semi-definite), which needs no complex `sqrtm` and gives 0 (to rounding) for a set against
  itself.
- KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial
  kernel `k(x, y) = (x.y / d + 1)^3`, averaged over random subsets.
- Precision and recall (Kynkäänniemi et al. 2019): the fraction of one set inside the union of the
  other set's k-nearest-neighbour balls.

Statistics are float64 numpy; reference statistics are saved as ``.npz`` with arrays ``mu`` and
``sigma``, the format pytorch-fid and the TTUR code read and write.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.atomic_write import atomic_path
from jaxdiff.errors import UserError


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """Mean `[D]` and covariance `[D, D]` of a feature set (the unbiased, N - 1 covariance)."""

    mu: np.ndarray
    sigma: np.ndarray

    @property
    def dim(self) -> int:
        return self.mu.shape[0]

    def save(self, path: str | Path) -> None:
        """Writes ``mu`` and ``sigma`` to an ``.npz`` file (pytorch-fid's format), whole or not
        at all."""
        with atomic_path(path) as partial, open(partial, "wb") as handle:
            np.savez(handle, mu=self.mu, sigma=self.sigma)  # a handle: no ".npz" appended

    @classmethod
    def load(cls, path: str | Path, dim: int | None = None) -> FeatureStatistics:
        """Reads an ``.npz`` of ``mu`` `[D]` and ``sigma`` `[D, D]`; ``dim`` checks D."""
        try:
            with np.load(path) as stored:
                missing = {"mu", "sigma"} - set(stored.files)
                if missing:
                    raise UserError(
                        f"reference statistics {str(path)!r} lack {', '.join(sorted(missing))}; "
                        f"they hold {', '.join(stored.files) or 'nothing'}"
                    )
                mu, sigma = np.asarray(stored["mu"], np.float64), np.asarray(stored["sigma"])
        except UserError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise UserError(f"{str(path)!r} is not an .npz file of statistics ({error})") from None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
            raise UserError(
                f"reference statistics {str(path)!r} have mu {mu.shape} and sigma {sigma.shape}; "
                "expected [D] and [D, D]"
            )
        if dim is not None and mu.shape[0] != dim:
            raise UserError(
                f"reference statistics {str(path)!r} have dimension {mu.shape[0]}, but the "
                f"feature extractor gives {dim}"
            )
        return cls(mu, sigma.astype(np.float64))


def feature_statistics(features: np.ndarray) -> FeatureStatistics:
    """Mean and unbiased covariance of `[N, D]` features (N >= 2)."""
    features = _check_features(features, "features", minimum=2)
    return FeatureStatistics(
        features.mean(axis=0),
        np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1]),
    )


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """The Fréchet (2-Wasserstein) distance between N(a.mu, a.sigma) and N(b.mu, b.sigma)."""
    if a.dim != b.dim:
        raise UserError(f"statistics of dimension {a.dim} and {b.dim} cannot be compared")
    root = _psd_sqrt(a.sigma)
    middle = root @ b.sigma @ root
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
    mean_term = np.sum((a.mu - b.mu) ** 2)
    return float(max(mean_term + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt, 0.0))


def fid(features: np.ndarray, reference: np.ndarray | FeatureStatistics) -> float:
    """FID of `[N, D]` features against reference features `[M, D]` or saved statistics."""
    if not isinstance(reference, FeatureStatistics):
        reference = feature_statistics(reference)
    stats = feature_statistics(features)
    if stats.dim != reference.dim:
        raise UserError(
            f"features have dimension {stats.dim}, the reference statistics {reference.dim}"
        )
    return frechet_distance(stats, reference)


def _polynomial_kernel(x: jax.Array, y: jax.Array) -> jax.Array:
    """`(x.y / d + 1)^3`: x `[m, d]`, y `[n, d]` -> `[m, n]`."""
    return (x @ y.T / x.shape[-1] + 1.0) ** 3


def _unbiased_mmd2(x: jax.Array, y: jax.Array) -> jax.Array:
    """Unbiased squared MMD of one pair of subsets x `[m, d]`, y `[m, d]` -> `[]`."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    off_diagonal = k_xx.sum() - jnp.trace(k_xx) + k_yy.sum() - jnp.trace(k_yy)
    return off_diagonal / (m * (m - 1)) - 2.0 * k_xy.mean()


@jax.jit
def _subset_mmd2(
    x: jax.Array, y: jax.Array, x_subsets: jax.Array, y_subsets: jax.Array
) -> jax.Array:
    """`_unbiased_mmd2` of `x[x_subsets[s]]` and `y[y_subsets[s]]` for each s, one subset at a
    time (memory O(m^2 + m d) beyond the inputs): x `[N, d]`, y `[M, d]`, indices `[S, m]` ->
    `[S]`."""
    return jax.lax.map(lambda s: _unbiased_mmd2(x[s[0]], y[s[1]]), (x_subsets, y_subsets))


def kid(
    features: np.ndarray,
    reference: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and standard deviation over ``subsets`` random subsets of ``subset_size``
    (capped at the smaller set's size) drawn without replacement from each set."""
    features = _check_features(features, "features", minimum=2)
    reference = _check_features(reference, "reference features", minimum=2)
    if features.shape[1] != reference.shape[1]:
        raise UserError(
            f"features have dimension {features.shape[1]}, the reference {reference.shape[1]}"
        )
    if subsets < 1 or subset_size < 2:
        raise UserError(
            f"KID needs subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}"
        )
    m = min(subset_size, len(features), len(reference))
    rng = np.random.default_rng(seed)
    x_subsets = np.stack([rng.choice(len(features), m, replace=False) for _ in range(subsets)])
    y_subsets = np.stack([rng.choice(len(reference), m, replace=False) for _ in range(subsets)])
    values = np.asarray(
        _subset_mmd2(
            jnp.asarray(features, jnp.float32),
            jnp.asarray(reference, jnp.float32),
            jnp.asarray(x_subsets),
            jnp.asarray(y_subsets),
        )
    )  # [subsets]
    return float(values.mean()), float(values.std())


@jax.jit
def _squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """`[m, d]`, `[n, d]` -> `[m, n]` squared Euclidean distances."""
    return jnp.maximum(jnp.sum(x**2, -1)[:, None] + jnp.sum(y**2, -1)[None, :] - 2.0 * x @ y.T, 0.0)


def _rows(x: np.ndarray, y: np.ndarray, reduce, block: int = 4096) -> jax.Array:
    """``reduce`` of the squared distances of each x row to all of y, in blocks of x rows."""
    y = jnp.asarray(y)
    return jnp.concatenate(
        [
            reduce(_squared_distances(jnp.asarray(x[i : i + block]), y))
            for i in range(0, len(x), block)
        ]
    )


def _coverage(queries: np.ndarray, support: np.ndarray, k: int) -> float:
    """Fraction of ``queries`` inside any support point's k-th-nearest-neighbour ball."""
    # The k-th neighbour's distance (index k: the point itself is at 0). [n]
    radii = _rows(support, support, lambda d: jnp.sort(d, axis=1)[:, k])
    inside = _rows(queries, support, lambda d: jnp.any(d <= radii[None, :], axis=1))  # [m]
    return float(jnp.mean(inside))


def precision_recall(
    features: np.ndarray, reference: np.ndarray, k: int = 3
) -> tuple[float, float]:
    """Improved precision (generated inside the reference manifold) and recall (reference
    inside the generated manifold), Kynkäänniemi et al. 2019, with k-NN radii."""
    features = _check_features(features, "features", minimum=k + 1)
    reference = _check_features(reference, "reference features", minimum=k + 1)
    if features.shape[1] != reference.shape[1]:
        raise UserError(
            f"features have dimension {features.shape[1]}, the reference {reference.shape[1]}"
        )
    x, y = features.astype(np.float32), reference.astype(np.float32)
    return _coverage(x, y, k), _coverage(y, x, k)


def _check_features(features: np.ndarray, name: str, minimum: int) -> np.ndarray:
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < minimum:
        raise UserError(f"{name} must be [N, D] with N >= {minimum}, got shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise UserError(f"{name} hold non-finite values")
    return features
