"""The report's picture of domain alignment: source and target features in two dimensions (PCA),
before adaptation (the frozen backbone's pooled features) and after (the hidden features of the
best trial's head), from the cached features."""

from __future__ import annotations

import numpy as np

from tlsearch.errors import UserError
from tlsearch.report.parts import Section, style
from tlsearch.search.attrs import ATTR, trial_params

__all__ = ["domain_pca_section", "pca_2d"]

#: examples of each domain drawn, at most
_POINTS = 300


def pca_2d(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets projected on the first two principal axes of their union."""
    both = np.concatenate([a, b]).astype(np.float64)
    mean = both.mean(axis=0)
    _, _, vt = np.linalg.svd(both - mean, full_matrices=False)
    axes = vt[:2].T
    return (a - mean) @ axes, (b - mean) @ axes


def domain_pca_section(study, cfg) -> Section | None:
    """None for a study without ``data.target``."""
    if not study.user_attrs.get(ATTR["target"]):
        return None
    from plotly.subplots import make_subplots

    from tlsearch import modalities
    from tlsearch.export.exporter import select_trial
    from tlsearch.search.artifacts import AtomicFileSystemArtifactStore, fetch_weights
    from tlsearch.search.inputs import check_inputs
    from tlsearch.train.cache import FeatureCache
    from tlsearch.train.dann_stage import head_outputs, target_split

    s = Section("Source and target features, before and after adaptation (PCA)")
    try:
        bt = select_trial(study)
        if bt.user_attrs.get(ATTR["best_stage"]) != 1:
            s.note = "The best trial's kept epoch is in stage 2: its head does not read the pooled features."
            return s
        weights = fetch_weights(bt, AtomicFileSystemArtifactStore(cfg.artifact_dir, create=False))
        modality, data = check_inputs(cfg)
    except UserError as e:
        s.note = f"Not available: {e}"
        return s
    p = trial_params(bt)
    cache = FeatureCache(cfg.cache_dir, int(cfg.cache.max_gb * 2**30), warn=lambda *a: None)
    source = modalities.get(modality).make_source(cfg, data, cache)
    # the validation split is target data when the study has target labels: the source side is
    # then the source training split
    labelled = bool(data.target_validation)
    f_va = np.asarray(source.frozen_outputs(p.backbone, 0, p)[0 if labelled else 1])
    split = "training" if labelled else "validation"
    f_t = np.asarray(source.target_outputs(p.backbone, p))
    f_t = f_t[target_split(len(f_t), cfg.seed)[1]]
    rng = np.random.default_rng(cfg.seed)
    f_va = f_va[rng.permutation(len(f_va))[:_POINTS]]
    f_t = f_t[rng.permutation(len(f_t))[:_POINTS]]
    adapted = trial_params(bt).domain_lambda_max != "off"
    after = "after adaptation" if adapted else "the head's features (this trial did not adapt)"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("backbone features (before)", after))
    for col, (a, b) in enumerate(((f_va, f_t), (head_outputs(weights, f_va)[0],
                                                 head_outputs(weights, f_t)[0])), 1):
        pa, pb = pca_2d(a, b)
        for pts, name, color in ((pa, f"source ({split})", "#4C72B0"),
                                 (pb, "target (held out)", "#DD8452")):
            fig.add_scatter(x=pts[:, 0], y=pts[:, 1], mode="markers", name=name,
                            marker=dict(size=4, color=color, opacity=0.6), legendgroup=name,
                            showlegend=col == 1, row=1, col=col)
    s.intro = (f"Trial #{bt.number}: {len(f_va)} source {split} and {len(f_t)} held-out target "
               f"examples, each panel projected on its own first two principal axes. Overlapping "
               f"clouds mean features that do not give the domain away; they do not show that the "
               f"classes line up across domains.")
    s.figure = style(fig, 440)
    return s
