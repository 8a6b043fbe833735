"""Rank backbones before training any of them: LogME on frozen pooled features.

Why: a study that searches several backbones spends most of its trials learning which backbone
to use. The frozen pooled features of every candidate are computed anyway (stage 1 trains on them,
and the feature cache keeps them), and LogME (You et al., ICML 2021, "LogME: Practical Assessment
of Pre-trained Models for Transfer Learning") turns them into a score in seconds, about what one
stage-1 head costs and far less than the trials a search spends on each backbone. Keeping only the
best-scoring backbones leaves the trials to the other choices (blocks to unfreeze, learning rates,
head).

What LogME computes: for each class, the one-hot target ``y`` is modelled as a linear function of
the features with a Gaussian prior on the weights (precision ``alpha``) and Gaussian noise
(precision ``beta``); ``alpha`` and ``beta`` are set by maximising the marginal likelihood (the
evidence) with MacKay's fixed-point updates, which after one decomposition of the features cost
O(rank) per step. The score is the maximised log evidence averaged over classes and divided by the
number of examples. It is a property of the features alone: no learning rate, no epochs, no
randomness.

This follows the authors' reference implementation (the fixed-point version, with its start
``alpha = beta = 1``, its ``1e-5`` guards and its stopping rule ``|dt| / t <= 1e-3`` on
``t = alpha / beta``); with more examples than feature dimensions and a converging iteration its
scores agree with the reference's. It differs in two ways:

* the log-determinant counts every one of the D feature dimensions: a direction the features do
  not span contributes ``log(alpha)``, as the evidence formula says. With fewer examples than
  dimensions the reference's fixed-point version sums over the N singular values only and drops
  the other D - N terms, which inflates its score (its earlier ICML version, which decomposes the
  D x D matrix, does not).
* classes are the label values present (any hashable values), so a missing class id does not add a
  class with no positive examples; the evidence is evaluated at the final ``alpha`` and ``beta``,
  and the iteration runs to convergence (up to ``max_iter`` steps, not 11; see :func:`logme`).

In a study file (read by the study; this module only scores and ranks)::

    backbones: [efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, mobilenet_v2]
    prescreen: {method: logme, keep: 2}

The study should, once before its first trial: compute each backbone's pooled features on the
*training* split (``BackboneSource.frozen_outputs(name, 0)`` computes and caches them, so the kept
backbones' stage 1 reuses them), call :func:`rank_backbones` with the training labels, search only
the kept backbones, and store the ranking with the study so that resumed runs and other workers
search the same choices. Validation labels are never used: the ranking must not see the data that
judges trials.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

__all__ = ["LogMEResult", "METHODS", "logme", "logme_score", "rank_backbones"]

_EPS = 1e-5  # the reference implementation's guard on the denominators of the updates
_TOL = 1e-3  # stop when t = alpha / beta moves by less than this, relatively


@dataclass(frozen=True)
class LogMEResult:
    """The score and what produced it, per class (in the order of ``classes``)."""

    score: float
    classes: np.ndarray
    #: the maximised log evidence of each class's one-hot target, divided by the number of examples
    evidences: np.ndarray
    alphas: np.ndarray
    betas: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    #: numerical rank of the features (dimensions with non-zero singular value)
    rank: int
    seconds: float


def _check(features, labels) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2:
        raise ValueError(f"features must be one vector per example (n, d); got shape {f.shape}: "
                         f"pool or flatten them first")
    if y.ndim != 1 or len(y) != len(f):
        raise ValueError(f"labels must be one per example: {len(f)} feature rows, labels of shape {y.shape}")
    if len(f) < 2:
        raise ValueError("LogME needs at least 2 examples")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return f, y


def _spectrum(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, sigma): left singular vectors of the non-zero singular values and their squares.

    With more examples than dimensions, the eigendecomposition of the D x D Gram matrix is several
    times cheaper than an SVD of the N x D matrix (as in the reference); its eigenvalues are exact
    to about 1e-15 of the largest, so those below 1e-12 of it are treated as zero. Which of the
    tiny ones are dropped hardly matters: a dropped dimension counts as ``log(alpha)`` in the
    evidence, a kept one as ``log(alpha + beta * sigma)``.
    """
    from scipy.linalg import eigh

    n, d = f.shape
    if n > d:
        # LAPACK's divide and conquer (syevd) through SciPy: on 2 loaded cores it took 1.6-2.5 s for
        # D = 1280 where numpy.linalg.eigh took 10-11 s
        sigma, v = eigh(f.T @ f, driver="evd", check_finite=False)
        sigma, v = sigma[::-1], v[:, ::-1]
        keep = sigma > max(sigma[0], 0.0) * 1e-12
        sigma, v = sigma[keep], v[:, keep]
        u = (f @ v) / np.sqrt(sigma)
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        sigma = s**2
        keep = sigma > (sigma[0] if len(sigma) else 0.0) * 1e-20
        sigma, u = sigma[keep], u[:, keep]
    return u, sigma


def _terms(x2: np.ndarray, res_x2: np.ndarray, sigma: np.ndarray, t: np.ndarray):
    """(gamma, |m|^2, |y - F m|^2) of each class at its t = alpha / beta, in the singular basis.

    ``x2`` is (rank, classes): the squared coordinates of the targets on the left singular vectors.
    """
    s, tt = sigma[:, None], t[None, :]
    gamma = np.sum(s / (s + tt), axis=0)
    m2 = np.sum(s * x2 / (s + tt) ** 2, axis=0)
    res2 = np.sum(x2 * (tt / (s + tt)) ** 2, axis=0) + res_x2
    return gamma, m2, res2


def _evidence(alpha, beta, sigma, m2, res2, n, d) -> np.ndarray:
    """log p(y | alpha, beta) of the Bayesian linear model per class, all D dimensions in log|A|."""
    log_det = (np.sum(np.log(alpha[None, :] + beta[None, :] * sigma[:, None]), axis=0)
               + (d - len(sigma)) * np.log(alpha))
    return (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det
            - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))


def logme(features: np.ndarray, labels: np.ndarray, *, max_iter: int = 1000) -> LogMEResult:
    """LogME of ``features`` (n, d) for the class ``labels`` (n,), with its per-class details.

    ``max_iter`` bounds the fixed-point steps per class. Informative features with more examples
    than dimensions converge in a few steps (the reference stops at 11); weak features, or fewer
    examples than dimensions, took up to 775 in the tests. All classes step together and a step
    costs O(rank x classes), so the bound costs milliseconds. A class that has not converged by then
    keeps its last values and is flagged in ``converged``.
    """
    t0 = time.perf_counter()
    f, y = _check(features, labels)
    n, d = f.shape
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"LogME needs at least 2 classes; the labels hold {len(classes)}")
    u, sigma = _spectrum(f)
    nc = len(classes)
    iterations, converged = np.zeros(nc, dtype=int), np.zeros(nc, dtype=bool)
    if len(sigma) == 0:  # all-zero features explain nothing: the evidence has no maximum
        nan = np.full(nc, math.nan)
        return LogMEResult(score=-math.inf, classes=classes, evidences=np.full(nc, -math.inf),
                           alphas=nan, betas=nan.copy(), iterations=iterations, converged=converged,
                           rank=0, seconds=time.perf_counter() - t0)
    targets = (y[:, None] == classes[None, :]).astype(np.float64)  # one-hot, (n, classes)
    x2 = (u.T @ targets) ** 2
    # the part of each target outside the features' span
    res_x2 = np.maximum(np.sum(targets**2, axis=0) - x2.sum(axis=0), 0.0)
    alpha, beta = np.ones(nc), np.ones(nc)
    active = np.ones(nc, dtype=bool)
    for step in range(1, max_iter + 1):
        t = alpha[active] / beta[active]
        gamma, m2, res2 = _terms(x2[:, active], res_x2[active], sigma, t)
        alpha[active] = gamma / (m2 + _EPS)
        beta[active] = (n - gamma) / (res2 + _EPS)
        iterations[active] = step
        done = np.abs(alpha[active] / beta[active] - t) / t <= _TOL
        idx = np.flatnonzero(active)
        converged[idx[done]] = True
        active[idx[done]] = False
        if not active.any():
            break
    _, m2, res2 = _terms(x2, res_x2, sigma, alpha / beta)
    evidences = _evidence(alpha, beta, sigma, m2, res2, n, d) / n
    return LogMEResult(
        score=float(np.mean(evidences)), classes=classes, evidences=evidences, alphas=alpha,
        betas=beta, iterations=iterations, converged=converged, rank=len(sigma),
        seconds=time.perf_counter() - t0,
    )


def logme_score(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (n, d) for class ``labels`` (n,): higher means the features fit the
    labels better with a linear model. Comparable between backbones on the same examples only."""
    return logme(features, labels).score


#: prescreening methods: name -> score(features, labels), higher is better
METHODS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"logme": logme_score}


def rank_backbones(features_by_backbone: Mapping[str, tuple[np.ndarray, np.ndarray]], keep: int,
                   *, method: str = "logme") -> list[tuple[str, float]]:
    """The ``keep`` best backbones as ``(name, score)``, best first.

    ``features_by_backbone`` maps each backbone to ``(features, labels)``: its frozen pooled
    features of the training examples and their labels. All backbones must be scored on the same
    examples (the scores are only comparable then), which is checked on the labels. A score that is
    not finite ranks last; ties keep the mapping's order. ``keep=len(features_by_backbone)`` gives
    the whole ranking (worth storing with the study, to show why a backbone was dropped).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a whole number of at least 1, not {keep!r}")
    if not features_by_backbone:
        raise ValueError("no backbones to rank")
    score = METHODS[method]
    first_name, (_, first_labels) = next(iter(features_by_backbone.items()))
    scored = []
    for i, (name, (x, y)) in enumerate(features_by_backbone.items()):
        if not np.array_equal(np.asarray(y), np.asarray(first_labels)):
            raise ValueError(f"{name!r} was scored on other labels than {first_name!r}: rank backbones "
                             f"on the same examples, in the same order")
        s = float(score(x, y))
        scored.append((name, s, i))
    scored.sort(key=lambda r: (not math.isfinite(r[1]), -r[1] if math.isfinite(r[1]) else 0.0, r[2]))
    return [(name, s) for name, s, _ in scored[:keep]]
