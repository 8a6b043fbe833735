"""Choosing a domain-adapted model without target labels, and saying how far to trust it.

See :mod:`tlsearch.train.dann` for what each criterion promises: the source validation loss (the
source risk only), a fresh domain classifier's held-out accuracy (how aligned the features are),
and Deep Embedded Validation (You et al., ICML 2019: the target risk under a covariate shift in
feature space, with its effective sample size as a warning).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tlsearch.train.dann import DANN, DEV_MIN_ESS_FRACTION, batched

__all__ = ["dev_weights", "dev_risk", "dev_diagnostics", "heldout_domain_accuracy",
           "selection_report"]


def _discriminator(features: np.ndarray, domains: np.ndarray, seed: int):
    """A scaled logistic regression, its strength chosen by held-out log loss."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def make(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))

    f_tr, f_te, d_tr, d_te = train_test_split(features, domains, test_size=0.25, random_state=seed,
                                              stratify=domains)
    best_c, best = 1.0, math.inf
    for c in (0.01, 0.1, 1.0, 10.0):
        ll = log_loss(d_te, make(c).fit(f_tr, d_tr).predict_proba(f_te)[:, 1], labels=[0, 1])
        if ll < best:
            best_c, best = c, ll
    return make(best_c)


def dev_weights(source_val_features, target_features, *, source_train_features=None,
                seed: int = 0, folds: int = 5) -> np.ndarray:
    """Importance weights ``p_target(f) / p_source(f)`` for each source validation example.

    A discriminator (source 0, target 1) gives ``p(target | f)``; Bayes' rule turns its odds into
    the density ratio, corrected for the numbers of examples of each domain it was trained on.
    With ``source_train_features`` it is trained on those and the target, as in the paper, and the
    validation examples are new to it. Without, it is cross-fitted: each fold of the validation
    examples is weighted by a discriminator that never saw it (an example's own weight would
    otherwise be inflated by overfitting).
    """
    fv = np.asarray(source_val_features, dtype=np.float64).reshape(len(source_val_features), -1)
    ft = np.asarray(target_features, dtype=np.float64).reshape(len(target_features), -1)
    eps = 1e-6

    def ratio(clf, f, n_s, n_t):
        pt = np.clip(clf.predict_proba(f)[:, 1], eps, 1 - eps)
        return pt / (1 - pt) * (n_s / n_t)

    if source_train_features is not None:
        fs = np.asarray(source_train_features, dtype=np.float64).reshape(len(source_train_features), -1)
        feats = np.concatenate([fs, ft])
        doms = np.r_[np.zeros(len(fs)), np.ones(len(ft))]
        clf = _discriminator(feats, doms, seed).fit(feats, doms)
        return ratio(clf, fv, len(fs), len(ft))

    from sklearn.model_selection import KFold

    feats = np.concatenate([fv, ft])
    doms = np.r_[np.zeros(len(fv)), np.ones(len(ft))]
    clf = _discriminator(feats, doms, seed)
    w = np.empty(len(fv))
    kv = KFold(folds, shuffle=True, random_state=seed).split(fv)
    kt = KFold(folds, shuffle=True, random_state=seed + 1).split(ft)
    for (v_tr, v_te), (t_tr, _) in zip(kv, kt):
        f = np.concatenate([fv[v_tr], ft[t_tr]])
        d = np.r_[np.zeros(len(v_tr)), np.ones(len(t_tr))]
        w[v_te] = ratio(clf.fit(f, d), fv[v_te], len(v_tr), len(t_tr))
    return w


def dev_risk(source_val_features, source_val_losses, target_features, *,
             source_train_features=None, weights=None, seed: int = 0) -> float:
    """Deep Embedded Validation: an estimate of the target risk from labelled source validation data.

    ``risk = mean(w * l) + eta * mean(w) - eta`` with ``eta = -Cov(w * l, w) / Var(w)``: the
    importance-weighted loss plus a control variate (the weights' mean is 1 in expectation), which
    lowers the variance that large weights bring. Unbiased under covariate shift in feature space
    with exact weights; see the module notes for what it does not promise. ``weights`` skips the
    discriminator (computed by :func:`dev_weights`).

    The control variate extrapolates the weighted loss to a mean weight of 1, so when the weights'
    mean is far from 1 (domains a discriminator separates: weights of 1e-6 or 1e6) the estimate is
    unbounded; it gave -40065 from losses between 0.004 and 2.8. The paper regularises the
    discriminator (here: its strength chosen on held-out log loss, :func:`_discriminator`) but does
    not bound the result; here it is clipped to the range of the losses it reweights, where any
    weighted mean of them lies. ``dev_reliable`` (:func:`dev_diagnostics`) says when that happened
    for a reason.
    """
    losses = np.asarray(source_val_losses, dtype=np.float64).ravel()
    w = (dev_weights(source_val_features, target_features,
                     source_train_features=source_train_features, seed=seed)
         if weights is None else np.asarray(weights, dtype=np.float64).ravel())
    if len(w) != len(losses):
        raise ValueError(f"{len(w)} weights for {len(losses)} losses")
    wl = w * losses
    var_w = np.var(w, ddof=1)
    if not var_w > 0:  # all weights equal: nothing to correct
        risk = float(np.mean(wl))
    else:
        eta = -np.cov(wl, w, ddof=1)[0, 1] / var_w
        risk = float(np.mean(wl) + eta * np.mean(w) - eta)
    return float(np.clip(risk, losses.min(), losses.max()))


def dev_diagnostics(weights) -> dict[str, Any]:
    """Whether importance weights can carry a DEV estimate: ``mean_weight`` (about 1 when the
    target's support lies inside the source's), ``effective_sample_size`` (``sum(w)^2 / sum(w^2)``)
    and ``reliable`` (an effective sample size of at least :data:`DEV_MIN_ESS_FRACTION` of the
    examples and a mean weight within a factor of 2 of 1)."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    ess = float(w.sum() ** 2 / np.sum(w ** 2)) if np.any(w) else 0.0
    mean = float(w.mean())
    return {"mean_weight": mean, "effective_sample_size": ess,
            "reliable": bool(ess >= DEV_MIN_ESS_FRACTION * len(w) and 0.5 <= mean <= 2.0)}


def heldout_domain_accuracy(source_features, target_features, *, seed: int = 0) -> float:
    """Accuracy of a fresh domain classifier on held-out features (0.5: indistinguishable).

    ``2 * (2 * accuracy - 1)`` is the proxy A-distance of Ben-David et al. A linear classifier
    only detects differences a linear probe can see; balanced by subsampling the larger domain.
    """
    from sklearn.model_selection import train_test_split

    fs = np.asarray(source_features, dtype=np.float64).reshape(len(source_features), -1)
    ft = np.asarray(target_features, dtype=np.float64).reshape(len(target_features), -1)
    rng = np.random.default_rng(seed)
    n = min(len(fs), len(ft))
    fs, ft = fs[rng.permutation(len(fs))[:n]], ft[rng.permutation(len(ft))[:n]]
    feats = np.concatenate([fs, ft])
    doms = np.r_[np.zeros(n), np.ones(n)]
    f_tr, f_te, d_tr, d_te = train_test_split(feats, doms, test_size=0.5, random_state=seed,
                                              stratify=doms)
    clf = _discriminator(f_tr, d_tr, seed).fit(f_tr, d_tr)
    return float(np.mean(clf.predict(f_te) == d_te))


def selection_report(model: DANN, x_source_val, y_source_val, x_target, *, x_source_train=None,
                     batch_size: int = 256, seed: int = 0) -> dict[str, Any]:
    """The label-free selection numbers for a trained model (lower is better for the risks).

    ``x_target`` are unlabelled target inputs, ideally not those trained on. Returns:

    * ``source_val_loss``, ``source_val_accuracy``: the label branch on source validation data;
    * ``dev_risk`` and its diagnostics ``dev_mean_weight`` (should be near 1: the weights'
      expectation over the source is 1 when the target's support lies inside the source's),
      ``dev_effective_sample_size`` (``sum(w)^2 / sum(w^2)``) and ``dev_reliable``: the effective
      sample size is at least :data:`DEV_MIN_ESS_FRACTION` of the examples and the mean weight
      within a factor of 2 of 1. When it is False the features of the two domains barely overlap
      and DEV is an estimate from a handful of examples, not a risk to rank models by;
    * ``domain_accuracy`` (a fresh classifier on held-out features) and ``own_domain_accuracy``
      (the model's discriminator);
    * ``bound_proxy``: source validation error + ``2 * domain_accuracy - 1`` (half the proxy
      A-distance): the two measurable terms of Ben-David et al.'s bound on the target error. The
      third term, the error of the best joint classifier, is unknown, so this ranks models by a
      bound it cannot evaluate; a heuristic.
    """
    fv = model.features(x_source_val, batch_size)
    ft = model.features(x_target, batch_size)
    fs = model.features(x_source_train, batch_size) if x_source_train is not None else None
    losses = model.example_losses(x_source_val, y_source_val, batch_size)
    preds = batched(lambda b: model(b, training=False), x_source_val, batch_size)
    y_idx = np.asarray(y_source_val)
    y_idx = y_idx.argmax(-1) if y_idx.ndim >= 2 and y_idx.shape[-1] > 1 else y_idx.ravel()
    w = dev_weights(fv, ft, source_train_features=fs, seed=seed)
    accuracy = float(np.mean(preds.argmax(-1) == y_idx))
    domain_accuracy = heldout_domain_accuracy(fv, ft, seed=seed)
    return {
        "source_val_loss": float(np.mean(losses)),
        "source_val_accuracy": accuracy,
        "dev_risk": dev_risk(fv, losses, ft, weights=w),
        **{"dev_" + k: v for k, v in dev_diagnostics(w).items()},
        "domain_accuracy": domain_accuracy,
        "own_domain_accuracy": model.own_domain_accuracy(x_source_val, x_target, batch_size),
        "bound_proxy": (1.0 - accuracy) + (2.0 * domain_accuracy - 1.0),
    }
