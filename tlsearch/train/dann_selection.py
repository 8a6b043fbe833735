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
           "selection_report", "bound_proxy", "prediction_entropy", "info_max",
           "reverse_validation", "shared_weights", "iwv_risk"]

#: weights above this many times their mean are clipped (:func:`shared_weights`)
MAX_WEIGHT = 20.0


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
        "bound_proxy": bound_proxy(accuracy, domain_accuracy),
    }


def _finite(x: float) -> float:
    return float(x) if math.isfinite(float(x)) else math.nan


def bound_proxy(accuracy: float, domain_accuracy: float) -> float:
    """Source validation error + ``max(0, 2 * domain_accuracy - 1)``: the two measurable terms of
    Ben-David et al.'s bound on the target error (2010), the proxy A-distance halved. A held-out
    domain accuracy below 0.5 is chance, not a negative distance: that term is clipped at 0.
    Assumes a classifier good on both domains at once exists (the bound's unknown third term)."""
    return _finite((1.0 - accuracy) + max(0.0, 2.0 * domain_accuracy - 1.0))


def _probabilities(probs) -> np.ndarray | None:
    """Rows of finite class probabilities, renormalised; None when there are none."""
    p = np.asarray(probs, dtype=np.float64)
    p = p.reshape(len(p), -1) if p.ndim != 2 else p
    p = p[np.all(np.isfinite(p), axis=1)]
    if not len(p):
        return None
    p = np.clip(p, 0.0, None)
    s = p.sum(axis=1, keepdims=True)
    p = p[s[:, 0] > 0] / s[s[:, 0] > 0]
    return p if len(p) else None


def _entropy(p: np.ndarray) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def prediction_entropy(probs) -> float:
    """Mean entropy (nats) of the class probabilities on unlabelled target examples; lower is
    better. Entropy minimisation as a selection score (Grandvalet & Bengio, NIPS 2004; used to
    choose adapted models by Morerio et al., ICLR 2018): it assumes a confident model is a right
    one, which fails when a model is confidently wrong, or collapses onto few classes (see
    :func:`info_max`). Rows that are not finite are left out; NaN when none is left."""
    p = _probabilities(probs)
    return math.nan if p is None else max(0.0, float(_entropy(p).mean()))


def info_max(probs) -> float:
    """Information maximisation on unlabelled target examples, lower is better: the mean
    per-example entropy plus ``log K - H(mean prediction)`` (the KL divergence of the mean
    prediction from uniform, K classes). This is the loss of Shi & Sha (ICML 2012) and SHOT
    (Liang et al., ICML 2020) shifted by ``log K`` so it lies in ``[0, 2 log K]``: confident on
    each example, yet using all classes; a model that puts everything in one class scores worse
    than an equally confident one that spreads its predictions. Assumes the target's classes are
    roughly balanced. NaN when no row is finite."""
    p = _probabilities(probs)
    if p is None:
        return math.nan
    k = p.shape[1]
    diversity = math.log(k) - float(_entropy(p.mean(axis=0)))
    return max(0.0, float(_entropy(p).mean()) + max(0.0, diversity))


def reverse_validation(target_features, target_probs, source_features, source_labels, *,
                       n_classes: int | None = None, seed: int = 0) -> dict[str, float]:
    """Reverse validation (Zhong et al., ECML PKDD 2010; Ganin et al., JMLR 2016, section 5.1.2):
    the target examples are labelled by the trial's own predictions, a *reverse* classifier is
    trained on them (target features, pseudo-labels) and scored on labelled source validation
    examples. Lower is better: ``loss`` (cross-entropy, at least 0) and ``error``. A trial whose
    pseudo-labels are wrong on the target (classes swapped, collapsed) teaches the reverse
    classifier the wrong rule and scores badly on the source.

    Ganin et al. train a whole reverse DANN; here the reverse classifier is a scaled logistic
    regression on the trial's own features (the head's hidden layer), fitted in seconds. It
    assumes those features carry the class structure to the source side, and that the source
    validation examples were not trained on by the reverse classifier (they never are). NaN (both)
    when a feature or probability is not finite."""
    ft = np.asarray(target_features, dtype=np.float64).reshape(len(target_features), -1)
    fs = np.asarray(source_features, dtype=np.float64).reshape(len(source_features), -1)
    pt = np.asarray(target_probs, dtype=np.float64)
    y = np.asarray(source_labels).astype(int).ravel()
    nan = {"loss": math.nan, "error": math.nan}
    if not (len(ft) and len(fs) and np.all(np.isfinite(ft)) and np.all(np.isfinite(fs))
            and np.all(np.isfinite(pt))):
        return nan
    k = int(n_classes or max(pt.shape[1], int(y.max()) + 1))
    pseudo = pt.argmax(axis=1)
    probs = np.full((len(fs), k), 1e-7)
    classes = np.unique(pseudo)
    if len(classes) == 1:  # one class for every target example: that is all it can predict
        probs[:, classes[0]] = 1.0
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500,
                                                                 random_state=seed))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence at max_iter is fine for a score
            clf.fit(ft, pseudo)
            probs[:, clf.classes_] = np.maximum(clf.predict_proba(fs), 1e-7)
    loss = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))
    return {"loss": max(0.0, _finite(loss.mean())),
            "error": _finite(np.mean(probs.argmax(axis=1) != y))}


_SHARED: dict[tuple, np.ndarray] = {}


def shared_weights(source_features, target_features, *, source_train_features=None,
                   seed: int = 0, max_weight: float = MAX_WEIGHT) -> np.ndarray:
    """Importance weights ``p_target / p_source`` for the labelled source examples, estimated on
    features every trial shares (the frozen backbone's pooled output), so that every trial's
    weighted loss (:func:`iwv_risk`) is over the same weights and the values compare across trials
    (Sugiyama, Krauledat & Müller, JMLR 2007, importance-weighted cross-validation). The density
    ratio comes from a domain classifier (:func:`dev_weights`); the weights are normalised to mean
    1 and clipped at ``max_weight``, which trades a little bias for a bounded variance (the risk
    is self-normalised, so the clipped weights need no second normalisation). Assumes covariate shift in the backbone's feature space (the class given
    the features is the same in both domains) and a target whose support lies inside the source's.

    Computed once per set of features and seed and kept (a study's trials all ask for the same)."""
    fs = np.ascontiguousarray(np.asarray(source_features, dtype=np.float32))
    ft = np.ascontiguousarray(np.asarray(target_features, dtype=np.float32))
    fr = (None if source_train_features is None
          else np.ascontiguousarray(np.asarray(source_train_features, dtype=np.float32)))
    import hashlib

    h = hashlib.sha1()
    for a in (fs, ft, fr):
        h.update(b"none" if a is None else repr(a.shape).encode() + a.tobytes())
    key = (h.hexdigest(), seed, float(max_weight))
    if key not in _SHARED:
        w = dev_weights(fs, ft, source_train_features=fr, seed=seed)
        w = np.where(np.isfinite(w), w, 0.0)
        w = np.clip(w / w.mean(), 0.0, max_weight) if w.mean() > 0 else np.ones_like(w)
        if len(_SHARED) >= 4:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[key] = w
    return _SHARED[key].copy()


def iwv_risk(losses, weights) -> float:
    """Importance-weighted validation loss ``sum(w * l) / sum(w)`` (self-normalised, so at least
    0 and within the losses' range) of one trial's per-example source validation losses under the
    study's shared weights (:func:`shared_weights`); lower is better. Examples whose loss is not
    finite count at the largest finite loss; NaN when none is finite."""
    l = np.asarray(losses, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    if len(l) != len(w):
        raise ValueError(f"{len(w)} weights for {len(l)} losses")
    ok = np.isfinite(l)
    if not ok.any() or not np.sum(w) > 0:
        return math.nan
    l = np.where(ok, l, l[ok].max())
    return max(0.0, float(np.sum(w * l) / np.sum(w)))
