"""Run the peers side by side under one wall-clock budget each, then tlsearch's own cost figures.

    python benchmarks/run_benchmark.py --budget-seconds 240 --seeds 0 --out bench-out
    python benchmarks/run_benchmark.py --tiny --out /tmp/bench   # the CI version, well under a minute

Writes ``results.json`` (every figure, and every trial of every peer) and ``results.md`` (the table)
into ``--out`` and prints the table. Each peer runs in a fresh process, one after the other, so they
never compete for the CPU; ``--tiny`` runs them in this process instead (one TensorFlow import) with
two trials each.

How the figures are computed, all from the same run:

* seconds per stage-1-only trial: the median wall time of trials that trained stage 1 only and ran
  all its epochs; when a peer finished none within its budget, its trials' median time outside
  training plus ``stage1_epochs`` times its median stage-1 epoch (marked ``estimated``).
* best validation accuracy: the best epoch of any trial finished within the budget.
* test accuracy: each peer's chosen model (the best epoch of its best completed trial within the
  budget) on held-out test images that no peer used to choose. Across seeds: the mean, its
  standard error (standard deviation over seeds / sqrt(seeds)), and for tlsearch against each peer
  the mean of the paired per-seed differences with two standard errors: the larger of the paired
  differences' and the binomial one of a difference of two accuracies on the test images. Ahead
  by more than that is called significant.
* fences: the chosen parameters that sit at the edge of the searched range (the bound of an
  integer, the outer 5% otherwise; all blocks unfrozen is full fine-tuning, not a fence).
* tlsearch's floor: one forward pass of every image through the backbone (timed separately, warm)
  plus its pure training, each trained stage's epochs times that stage's fastest epoch (the first
  epoch also traces, which is overhead, not training).
* per-trial overhead: a trial's wall time minus its pure training.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

PEERS = ("plain_optuna", "keras_tuner", "tlsearch")
TARGETS = {
    "stage1_trial_speedup_vs_plain_optuna": 50.0,
    "study_time_over_floor": 1.2,
    "rss_growth_mb_over_100_trials": 200.0,
    "tlsearch_test_accuracy": 0.90,
}


# ---------------------------------------------------------------------------------------------
# Running


def _subprocess(script: str, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in [str(common.REPO), os.environ.get("PYTHONPATH", "")] if p)}
    cmd = [sys.executable, str(HERE / script), *args, "--out", str(out)]
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}")
    return json.loads(out.read_text())


def run_all(s: common.Settings, budget: float, seeds: list[int], *, max_trials: int | None,
            rss_trials: int, sweep_sizes: list[int], sweep_trials: int, in_process: bool,
            costs_too: bool = True,
            peers=PEERS, work: Path) -> dict:
    runs: dict[str, list[dict]] = {p: [] for p in peers}
    timings: dict[str, float] = {}
    for seed in seeds:
        si = common.settings_from({**s.to_dict(), "seed": seed})
        for peer in peers:
            t = time.perf_counter()
            if in_process:
                from peers import run_peer

                runs[peer].append(run_peer(peer, si, budget, max_trials))
            else:
                args = [peer, "--budget-seconds", str(budget), "--settings", json.dumps(si.to_dict())]
                if max_trials:
                    args += ["--max-trials", str(max_trials)]
                runs[peer].append(_subprocess("peers.py", args, work / f"{peer}-{seed}.json"))
            timings[f"{peer}-{seed}"] = time.perf_counter() - t
            # what is done so far survives an interrupted run
            (work / "partial.json").write_text(json.dumps({"runs": runs, "timings": timings},
                                                          default=float))
    costs: dict = {}
    for what, extra in (("rss", ["--trials", str(rss_trials)]),
                        ("sweep", ["--trials", str(sweep_trials),
                                   "--sizes", ",".join(map(str, sweep_sizes))])):
        if not costs_too:
            break
        t = time.perf_counter()
        if in_process:
            import tlsearch_costs as tc

            costs[what] = (tc.rss_run(s, rss_trials) if what == "rss"
                           else tc.sweep_run(s, sweep_sizes, sweep_trials))
        else:
            costs[what] = _subprocess("tlsearch_costs.py",
                                      [what, "--settings", json.dumps(s.to_dict()), *extra],
                                      work / f"{what}.json")
        timings[what] = time.perf_counter() - t
    return {"runs": runs, "costs": costs, "timings": timings}


# ---------------------------------------------------------------------------------------------
# Figures


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _pure_training(trial: dict) -> float:
    """Epochs of each stage times that stage's fastest epoch."""
    total = 0.0
    for stage in (1, 2):
        secs = [e["seconds"] for e in trial["epochs"] if e["stage"] == stage]
        if secs:
            total += len(secs) * min(secs)
    return total


def _in_budget(run: dict) -> list[dict]:
    return [t for t in run["trials"] if t["finished_at"] <= run["budget_seconds"] + 1e-6]


def stage1_trial_seconds(run: dict, stage1_epochs: int) -> tuple[float | None, str]:
    full = [t["seconds"] for t in _in_budget(run) if t["stage1_only"] and t["state"] == "COMPLETE"
            and sum(e["stage"] == 1 for e in t["epochs"]) == stage1_epochs]
    if full:
        return statistics.median(full), "measured"
    trials = _in_budget(run) or run["trials"]
    epoch = _median([e["seconds"] for t in trials for e in t["epochs"] if e["stage"] == 1])
    outside = _median([t["seconds"] - sum(e["seconds"] for e in t["epochs"]) for t in trials])
    if epoch is None or outside is None:
        return None, "none"
    return outside + stage1_epochs * epoch, "estimated"


def fences(params: dict) -> list[str]:
    """The chosen parameters at the edge of :data:`common.SPACE` (see the module's docstring)."""
    import math

    out = []
    for name, (kind, *args) in common.SPACE.items():
        if kind == "choice" or name not in params:
            continue
        lo, hi, v = float(args[0]), float(args[1]), float(params[name])
        if kind == "int":
            at_low, at_high = v <= lo, v >= hi and name != "unfreeze_blocks"
            at_low = at_low and name != "unfreeze_blocks"
        else:
            f = math.log if kind == "log" else (lambda x: x)
            pos = (f(v) - f(lo)) / (f(hi) - f(lo))
            at_low, at_high = pos <= 0.05, pos >= 0.95
        if at_low or at_high:
            out.append(f"{name}={v:.3g} at the {'bottom' if at_low else 'top'} of {lo:g}..{hi:g}")
    return out


def peer_figures(run: dict) -> dict:
    s = run["settings"]
    done = _in_budget(run)
    accs = [t["val_accuracy"] for t in done if t["val_accuracy"] is not None]
    sec, how = stage1_trial_seconds(run, s["stage1_epochs"])
    chosen = run.get("chosen") or {}
    return {
        "seed": s["seed"],
        "trials_finished": len(done),
        "best_val_accuracy": max(accs) if accs else None,
        "chosen_trial": chosen.get("number"),
        "chosen_val_accuracy": chosen.get("val_accuracy"),
        "test_accuracy": chosen.get("test_accuracy"),
        "chosen_params": chosen.get("params"),
        "fences": fences(chosen.get("params") or {}),
        "seconds_per_stage1_trial": sec,
        "seconds_per_stage1_trial_is": how,
        "wall_seconds": run["wall"],
    }


def _mean_se(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    m = statistics.mean(xs)
    return m, (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else None)


def compare(mine: list[dict], theirs: list[dict], n_test: int) -> dict:
    """tlsearch against one peer on test accuracy, paired by seed (same data in each seed)."""
    pairs = [(a["test_accuracy"], b["test_accuracy"]) for a, b in zip(mine, theirs)
             if a["seed"] == b["seed"] and a["test_accuracy"] is not None
             and b["test_accuracy"] is not None]
    if not pairs:
        return {"seeds": 0}
    diffs = [a - b for a, b in pairs]
    mean, se_paired = _mean_se(diffs)
    # a difference of two accuracies on n test images, averaged over the seeds
    binom = (sum(a * (1 - a) / n_test + b * (1 - b) / n_test for a, b in pairs)
             / len(pairs) ** 2) ** 0.5
    se = max(se_paired or 0.0, binom)
    return {"seeds": len(pairs), "difference": mean, "se_paired": se_paired, "se_binomial": binom,
            "se": se, "significant": mean > 2 * se}


def tlsearch_figures(run: dict) -> dict:
    trials = _in_budget(run) or run["trials"]
    pure = [_pure_training(t) for t in trials]
    overhead = [t["seconds"] - p for t, p in zip(trials, pure)]
    stage1 = [o for t, o in zip(trials, overhead) if t["stage1_only"]]
    wall = min(run["wall"], max(t["finished_at"] for t in trials)) if trials else run["wall"]
    floor = run["forward_seconds"] + sum(pure)
    return {
        "study_seconds": wall,
        "forward_seconds": run["forward_seconds"],
        "pure_training_seconds": sum(pure),
        "floor_seconds": floor,
        "study_over_floor": wall / floor if floor else None,
        "trials": len(trials),
        "overhead_per_trial_mean": (wall - floor) / len(trials) if trials else None,
        "overhead_per_trial_median": _median(overhead),
        "overhead_per_stage1_trial_median": _median(stage1),
        "completed": sum(t["state"] == "COMPLETE" for t in trials),
        # tlsearch records this on completed trials only (a pruned trial stops before)
        "completed_cached": sum(bool(t.get("cached")) for t in trials if t["state"] == "COMPLETE"),
    }


def summarize(raw: dict, s: common.Settings, budget: float) -> dict:
    peers = {p: [peer_figures(r) for r in runs] for p, runs in raw["runs"].items()}
    agg = {}
    for p, rows in peers.items():
        accs = [r["best_val_accuracy"] for r in rows if r["best_val_accuracy"] is not None]
        test_mean, test_se = _mean_se([r["test_accuracy"] for r in rows
                                       if r["test_accuracy"] is not None])
        agg[p] = {
            "test_accuracy_mean": test_mean,
            "test_accuracy_se": test_se,
            "best_val_accuracy_mean": statistics.mean(accs) if accs else None,
            "best_val_accuracy_min": min(accs) if accs else None,
            "best_val_accuracy_max": max(accs) if accs else None,
            "trials_finished_mean": statistics.mean(r["trials_finished"] for r in rows),
            "seconds_per_stage1_trial": _median([r["seconds_per_stage1_trial"] for r in rows]),
            "seconds_per_stage1_trial_is": ",".join(sorted({r["seconds_per_stage1_trial_is"] for r in rows})),
        }
    ts = [tlsearch_figures(r) for r in raw["runs"].get("tlsearch", [])]
    rss = raw["costs"].get("rss")
    sweep = raw["costs"].get("sweep")
    versus = {p: compare(peers["tlsearch"], rows, s.n_test) for p, rows in peers.items()
              if p != "tlsearch" and "tlsearch" in peers}
    out = {
        "settings": s.to_dict(), "budget_seconds_per_peer": budget,
        "per_seed": peers, "peers": agg, "tlsearch": ts, "versus": versus,
        "rss": rss and {k: v for k, v in rss.items() if k != "points"},
        "trial_scaling": rss and {
            "first_trial_seconds": rss["first_trial_seconds"],
            "seconds_per_added_trial": rss["seconds_per_added_trial"],
            "at": {str(p["trial"] + 1): p["seconds"] for p in rss["points"]
                   if p["trial"] + 1 in (1, 10, 50, 100) or p is rss["points"][-1]}},
        "sweep": sweep,
    }
    out["targets"] = targets(out)
    return out


def targets(f: dict) -> dict:
    p = f["peers"]
    t = {}
    if "tlsearch" in p and "plain_optuna" in p and p["tlsearch"]["seconds_per_stage1_trial"]:
        theirs = p["plain_optuna"]["seconds_per_stage1_trial"]
        # None: the plain loop finished no trial in its budget (on a loaded machine)
        ratio = None if theirs is None else theirs / p["tlsearch"]["seconds_per_stage1_trial"]
        t["stage1_trial_speedup_vs_plain_optuna"] = {
            "value": ratio, "target": ">= 50",
            "met": ratio is not None and ratio >= TARGETS["stage1_trial_speedup_vs_plain_optuna"],
            **({"note": "plain_optuna: none in budget"} if ratio is None else {})}
    if "tlsearch" in p:
        mine = p["tlsearch"]["test_accuracy_mean"]
        t["tlsearch_test_accuracy"] = {
            "value": mine, "target": ">= 0.90",
            "met": mine is not None and mine >= TARGETS["tlsearch_test_accuracy"]}
        vs = f["versus"]
        t["test_accuracy_ahead_of_peers_by_2se"] = {
            "value": min((v["difference"] for v in vs.values() if v.get("seeds")), default=None),
            "peers": vs, "target": "> 2 standard errors ahead of every peer",
            "met": bool(vs) and all(v.get("significant") for v in vs.values())}
    if f["tlsearch"]:
        r = statistics.median(x["study_over_floor"] for x in f["tlsearch"])
        t["study_time_over_floor"] = {"value": r, "target": "<= 1.2",
                                      "met": r <= TARGETS["study_time_over_floor"]}
    if not f["rss"]:
        return t
    g = f["rss"]["rss_growth_mb"]
    t["rss_growth_mb"] = {"value": g, "trials": f["rss"]["trials"], "target": "< 200 over 100 trials",
                          "met": g < TARGETS["rss_growth_mb_over_100_trials"]}
    return t


# ---------------------------------------------------------------------------------------------
# Report


def _f(v, fmt="{:.3g}"):
    return "n/a" if v is None else fmt.format(v)


NONE_IN_BUDGET = "none in budget"


def peer_table(peers: dict) -> list[str]:
    """Markdown rows per peer; a peer that finished no trial in its budget reads so, not n/a."""
    lines = ["| peer | s per stage-1-only trial | trials finished in budget | best val accuracy "
             "(mean; min-max) |", "|---|---|---|---|"]
    for p, a in peers.items():
        none = not a.get("trials_finished_mean")
        secs = (NONE_IN_BUDGET if a["seconds_per_stage1_trial"] is None else
                f"{_f(a['seconds_per_stage1_trial'])} ({a['seconds_per_stage1_trial_is']})")
        acc = (NONE_IN_BUDGET if none or a["best_val_accuracy_mean"] is None else
               f"{_f(a['best_val_accuracy_mean'], '{:.4f}')}; "
               f"{_f(a['best_val_accuracy_min'], '{:.4f}')}-{_f(a['best_val_accuracy_max'], '{:.4f}')}")
        lines.append(f"| {p} | {secs} | {_f(a['trials_finished_mean'], '{:.1f}')} | {acc} |")
    return lines


def markdown(f: dict) -> str:
    s = f["settings"]
    lines = [
        f"Data: {s['n_train']} training + {s['n_val']} validation + {s.get('n_test', 0)} test "
        f"images at {s['image_size']} px; "
        f"{s['stage1_epochs']} + {s['stage2_epochs']} epochs, batch {s['batch_size']}; budget "
        f"{f['budget_seconds_per_peer']:g} s per peer; seeds "
        f"{', '.join(str(r['seed']) for r in next(iter(f['per_seed'].values())))}.",
        "",
        *peer_table(f["peers"]),
    ]
    lines += ["", "| peer | test accuracy of the chosen model (mean ± SE over seeds) | per seed "
              "(chosen trial: val accuracy, test accuracy, fences) |", "|---|---|---|"]
    for p, a in f["peers"].items():
        per = "; ".join(
            f"seed {r['seed']}: #{r['chosen_trial']} {_f(r['chosen_val_accuracy'], '{:.4f}')}, "
            f"{_f(r['test_accuracy'], '{:.4f}')}"
            + (f" ({', '.join(r['fences'])})" if r["fences"] else "")
            for r in f["per_seed"][p])
        lines.append(f"| {p} | {_f(a['test_accuracy_mean'], '{:.4f}')} ± "
                     f"{_f(a['test_accuracy_se'], '{:.4f}')} | {per} |")
    for p, v in f.get("versus", {}).items():
        if v.get("seeds"):
            lines.append(f"\ntlsearch - {p}: {v['difference']:+.4f} over {v['seeds']} seeds; one SE "
                         f"{v['se']:.4f} (paired {_f(v['se_paired'], '{:.4f}')}, binomial "
                         f"{v['se_binomial']:.4f}): "
                         f"{'significant' if v['significant'] else 'not significant'} at 2 SE.")
    lines += ["", "| tlsearch (per seed) | study s | forward s | pure training s | floor s | study / floor "
              "| overhead s/trial (mean; median; stage-1 median) | trials (completed; of those cached) |",
              "|---|---|---|---|---|---|---|---|"]
    for row, x in zip(f["per_seed"].get("tlsearch", []), f["tlsearch"]):
        lines.append(
            f"| seed {row['seed']} | {_f(x['study_seconds'])} | {_f(x['forward_seconds'])} | "
            f"{_f(x['pure_training_seconds'])} | {_f(x['floor_seconds'])} | {_f(x['study_over_floor'])} | "
            f"{_f(x['overhead_per_trial_mean'])}; {_f(x['overhead_per_trial_median'])}; "
            f"{_f(x['overhead_per_stage1_trial_median'])} | {x['trials']} ({x['completed']}; "
            f"{x['completed_cached']}) |")
    r = f["rss"]
    if not r:  # --skip-costs
        return _targets_md(lines, f)
    lines += ["", f"RSS over {r['trials']} stage-1-only trials in one process: {_f(r['rss_before_mb'], '{:.0f}')} MB "
              f"before, {_f(r['rss_after_first_mb'], '{:.0f}')} MB after the first trial, "
              f"{_f(r['rss_after_last_mb'], '{:.0f}')} MB after the last: growth "
              f"{_f(r['rss_growth_mb'], '{:.1f}')} MB.", ""]
    ts = f["trial_scaling"]
    lines.append(f"Trials: the first (with the cold cache) ends at {_f(ts['first_trial_seconds'])} s, then "
                 f"{_f(ts['seconds_per_added_trial'])} s per added trial; elapsed at trial "
                 + ", ".join(f"{k}: {_f(v)} s" for k, v in ts["at"].items()) + ".")
    lines += ["", f"| sweep ({f['sweep']['trials_per_study']} stage-1-only trials per study) | n_train | "
              f"n_val | backbones | study s | one forward pass s |", "|---|---|---|---|---|---|"]
    for row in f["sweep"]["rows"]:
        lines.append(f"| {row['kind']} | {row['n_train']} | {row['n_val']} | {row['backbones']} | "
                     f"{_f(row['study_seconds'])} | {_f(row['forward_seconds_one_backbone'])} |")
    return _targets_md(lines, f)


def _targets_md(lines: list[str], f: dict) -> str:
    lines += ["", "| target | value | wanted | met |", "|---|---|---|---|"]
    for k, t in f["targets"].items():
        value = _f(t['value']) if "note" not in t else t["note"]
        lines.append(f"| {k} | {value} | {t['target']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-seconds", type=float, default=240.0, help="wall clock per peer and seed")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    ap.add_argument("--tiny", action="store_true", help="CI: tiny data, 2 trials per peer, in process")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--skip-costs", action="store_true",
                    help="run the peers only, not the RSS and data-size measurements")
    ap.add_argument("--rss-trials", type=int, default=100)
    ap.add_argument("--sweep-sizes", default="500,1000,2000")
    ap.add_argument("--sweep-trials", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    ap.add_argument("--resummarize", action="store_true",
                    help="recompute the figures and table from --out/results.json; run nothing")
    a = ap.parse_args(argv)
    if a.resummarize:
        saved = json.loads((a.out / "results.json").read_text())
        old = saved["figures"]
        s = common.settings_from(old["settings"])
        figures = summarize(saved["raw"], s, old["budget_seconds_per_peer"])
        figures.update({k: old[k] for k in ("machine", "started_utc", "command")})
        return _write(a.out, figures, saved["raw"])
    s = common.TINY if a.tiny else common.FULL
    seeds = [int(v) for v in a.seeds.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    if a.tiny:
        kw = dict(max_trials=2, rss_trials=2, sweep_sizes=[60], sweep_trials=1, in_process=True)
    else:
        kw = dict(max_trials=None, rss_trials=a.rss_trials,
                  sweep_sizes=[int(v) for v in a.sweep_sizes.split(",")],
                  sweep_trials=a.sweep_trials, in_process=False, costs_too=not a.skip_costs)
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory() as work:
        kw["work"] = Path(work) if a.tiny else a.out
        raw = run_all(s, a.budget_seconds, seeds, peers=a.peers.split(","), **kw)
    figures = summarize(raw, s, a.budget_seconds)
    figures["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(),
                          "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    figures["started_utc"] = started.isoformat(timespec="seconds")
    figures["command"] = " ".join(["python", "benchmarks/run_benchmark.py", *(argv or sys.argv[1:])])
    return _write(a.out, figures, raw)


def _write(out: Path, figures: dict, raw: dict) -> int:
    (out / "results.json").write_text(json.dumps({"figures": figures, "raw": raw}, indent=1,
                                                 default=float))
    md = markdown(figures)
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
