"""Benchmark: chaos on one PostgreSQL study. Worker processes run the tiny image twin
(``tiny_cnn``, 36 synthetic 32-px images, 2 + 2 epochs: the test suite's ``make_image_folder`` and
``write_study``) on one study until it holds ``--workers x --trials-per-worker`` finished trials,
while this script injects faults and prints each one on a timeline:

* two worker processes SIGKILLed mid-trial (each holding a trial that has started training), each
  started again at once;
* every database connection of the run terminated twice (``pg_terminate_backend`` on the
  ``application_name`` given to every process through ``PGAPPNAME``);
* the artifacts folder (a small tmpfs mounted for the run) filled until a trial fails on its
  weights, then freed; the workers that stopped on it are started again;
* one worker's parent killed: ``--fleet`` of the workers run inside one ``tlsearch run --workers
  N`` process, which is SIGKILLed while its workers run trials; they must stop with one line, and
  as many independent processes take their place.

The other workers are independent ``tlsearch run STUDY --storage URL`` processes. Every process's
output goes to ``OUT/logs``. At the end the script checks: exactly the target of finished trials
(COMPLETE + PRUNED), every SIGKILLed trial FAIL with its reason and retried until it completed,
the parent's workers stopped with their line and their trials FAIL as ``interrupted`` (or
finished before the stop reached them), every failed trial with a recorded reason, no trial swept
as dead while its worker lived, none left RUNNING or WAITING, no traceback in any output,
every COMPLETE trial's weights present and matching their recorded size and SHA-256, every
process of the last generation exited 0. It exits 1, naming what failed, if any check fails.

Needs root (to mount the tmpfs) and a PostgreSQL server (``--pg``; default
``$TLSEARCH_TEST_PG`` or the one the tests use); the study lives in a fresh schema, dropped at the
end (``--keep-schema`` keeps it). Results: ``OUT/results.json`` and ``OUT/results.md``.

    python benchmarks/chaos_run.py --out chaos            # 8 workers x 25 trials
    python benchmarks/chaos_run.py --tiny --out chaos     # 4 workers x 5 trials (checks the script)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the tiny image twin: the tests' images and study

PG = os.environ.get("TLSEARCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WEIGHTS_FAILURE = "cannot write trial weights"
PARENT_GONE = "its parent process is gone; stopped"


# ---------------------------------------------------------------------------------------------
# processes


@dataclass
class Proc:
    """One ``tlsearch run`` process this script started."""

    name: str
    role: str  # "solo" (an independent process) or "parent" (tlsearch run --workers N)
    popen: subprocess.Popen
    log: Path
    started: float
    code: int | None = None
    killed: bool = False  # by this script: not restarted by the supervisor
    children: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid


class Run:
    """The processes of one chaos run, the clock, and the timeline of what was done."""

    def __init__(self, study: Path, url: str, app: str, logs: Path, threads: int) -> None:
        self.study, self.url, self.logs = study, url, logs
        self.t0 = time.time()
        self.procs: list[Proc] = []
        self.timeline: list[dict] = []
        self.restarts: list[dict] = []
        self.disk_full = False
        env = {k: v for k, v in os.environ.items() if k != "TLSEARCH_STORAGE"}
        env.update(PYTHONPATH=str(REPO), PGAPPNAME=app, TF_CPP_MIN_LOG_LEVEL="3",
                   TLSEARCH_NO_ESTIMATE="1", TLSEARCH_CACHE_DIR=str(study.parent / "cache"),
                   TF_NUM_INTRAOP_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        self.env = env

    def now(self) -> float:
        return time.time() - self.t0

    def say(self, what: str, **details) -> None:
        event = {"t": round(self.now(), 1), "event": what, **details}
        self.timeline.append(event)
        extra = "".join(f"; {k}={v}" for k, v in details.items())
        print(f"[{event['t']:7.1f} s] {what}{extra}", flush=True)

    def start(self, name: str, *extra: str, role: str = "solo") -> Proc:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as f:  # the workers of a parent inherit this file: it outlives it
            p = subprocess.Popen(
                [sys.executable, "-m", "tlsearch.cli", "run", str(self.study), "--storage",
                 self.url, "--no-estimate", *extra],
                stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=self.study.parent)
        proc = Proc(name, role, p, log, self.now())
        self.procs.append(proc)
        return proc

    def live(self, role: str | None = None) -> list[Proc]:
        return [p for p in self.procs if p.code is None and (role is None or p.role == role)]

    def reap(self) -> list[Proc]:
        """Record the processes that ended since the last call; return them."""
        ended = []
        for p in self.procs:
            if p.code is None and p.popen.poll() is not None:
                p.code = p.popen.returncode
                ended.append(p)
        return ended

    def supervise(self, max_restarts: int) -> None:
        """Start again, in its place, a solo process that stopped with an error this script did
        not cause (the full disk), once the disk is free; at most ``max_restarts`` times a run."""
        for p in self.reap():
            if p.killed or p.code == 0:
                continue
            tail = last_line(p.log)
            self.say(f"{p.name} (pid {p.pid}) exited with code {p.code}", last_line=tail)
            if p.role == "solo":
                self.restarts.append({"name": p.name, "code": p.code, "last_line": tail,
                                      "restarted": None})
        if self.disk_full:
            return
        for r in self.restarts:
            if r["restarted"] is None and sum(bool(x["restarted"]) for x in self.restarts) \
                    < max_restarts:
                q = self.start(f"{r['name']}-again")
                r["restarted"] = q.name
                self.say(f"started {q.name} (pid {q.pid}) in place of {r['name']}")

    def stop_all(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()
            for c in p.children:
                if alive(c):
                    os.kill(c, signal.SIGKILL)


def last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# the database


def admin(url: str, sql: str) -> list:
    """``sql`` on one short-lived connection (outside the run's application name); its rows."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool,
                           connect_args={"connect_timeout": 5, "application_name": "chaos-admin"})
    try:
        with engine.connect() as conn:
            result = conn.execute(text(sql))
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def terminate(url: str, app: str) -> int:
    """Terminate every connection of the run; how many there were."""
    rows = admin(url, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                      f"application_name = '{app}' AND pid <> pg_backend_pid()")
    return sum(1 for (ok,) in rows if ok)


def connections(url: str, app: str) -> int:
    return admin(url, f"SELECT count(*) FROM pg_stat_activity "
                      f"WHERE application_name = '{app}'")[0][0]


class Observer:
    """The study as the workers leave it, read on this script's own connection."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name, self.study = url, name, None

    def trials(self):
        import optuna

        if self.study is None:
            try:
                storage = optuna.storages.RDBStorage(
                    self.url, engine_kwargs={"pool_pre_ping": True, "connect_args": {
                        "application_name": "chaos-observer"}})
                self.study = optuna.load_study(study_name=self.name, storage=storage)
            except Exception:
                return []
        try:
            return self.study.get_trials(deepcopy=False)
        except Exception:
            return []


def count(ts, *states: str) -> int:
    return sum(t.state.name in states for t in ts)


def worker_pid(t) -> int | None:
    from tlsearch.search.attrs import WORKER_ATTR

    ident = t.user_attrs.get(WORKER_ATTR)
    try:
        return int(str(ident).rsplit(":", 2)[1]) if ident else None
    except (IndexError, ValueError):
        return None


def training(ts) -> list:
    """RUNNING trials that have started training (their parameters are stored)."""
    from tlsearch.search.attrs import ATTR

    return [t for t in ts if t.state.name == "RUNNING" and ATTR["params"] in t.user_attrs]


# ---------------------------------------------------------------------------------------------
# the artifacts file system


def fill(folder: Path) -> int:
    """Write a file into ``folder`` until its file system has no room left; bytes written."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    written = 0
    try:
        for chunk in (1 << 20, 4096, 512):
            block = b"\0" * chunk
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


def free(folder: Path) -> None:
    (folder / "filler").unlink()


# ---------------------------------------------------------------------------------------------
# the faults


class Chaos:
    def __init__(self, run: Run, obs: Observer, args, mnt: Path, app: str, target: int) -> None:
        self.run, self.obs, self.args, self.mnt, self.app = run, obs, args, mnt, app
        self.target = target
        self.killed: list[dict] = []
        self.terminations: list[dict] = []
        self.disk: dict = {}
        self.parent: dict = {}
        self.load: list[float] = []
        self.most_connections, self.sampled = 0, 0.0

    def tick(self) -> list:
        """Supervise the processes, sample the load; the trials as they are now."""
        self.run.supervise(self.args.max_restarts)
        self.load.append(os.getloadavg()[0])
        if time.time() - self.sampled > 2.0:  # the run's connections, every 2 s
            self.sampled = time.time()
            with contextlib.suppress(Exception):
                self.most_connections = max(self.most_connections,
                                            connections(self.obs.url, self.app))
        return self.obs.trials()

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ts = self.tick()
            found = predicate(ts)
            if found:
                return found
            if not self.run.live():
                break
            time.sleep(self.args.poll)
        self.run.say(f"gave up waiting for {what}")
        return None

    def finished(self, ts) -> int:
        return count(ts, "COMPLETE", "PRUNED")

    def sigkill(self, which: int) -> None:
        solo = {p.pid: p for p in self.run.live("solo")}
        found = self.wait_for(lambda ts: [t for t in training(ts) if worker_pid(t) in solo],
                              self.args.wait, "a solo worker mid-trial")
        if not found:
            return
        victim = solo[worker_pid(found[0])]
        held = sorted(t.number for t in self.obs.trials()
                      if t.state.name == "RUNNING" and worker_pid(t) == victim.pid)
        victim.killed = True
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait()
        victim.code = victim.popen.returncode
        self.run.say(f"SIGKILL {victim.name} (pid {victim.pid}) mid-trial", trials=held)
        again = self.run.start(f"{victim.name}-restart")
        self.run.say(f"started {again.name} (pid {again.pid}) in its place")
        self.killed.append({"n": which, "process": victim.name, "pid": victim.pid,
                            "trials": held, "restarted_as": again.name,
                            "t": round(self.run.now(), 1)})

    def terminate_connections(self, which: int) -> None:
        n = terminate(self.obs.url, self.app)
        self.run.say(f"terminated every database connection of the run (round {which})",
                     connections=n)
        self.terminations.append({"n": which, "connections": n, "t": round(self.run.now(), 1)})

    def kill_parent(self) -> None:
        parents = self.run.live("parent")
        if not parents:
            self.run.say("no parent process left to kill")
            return
        parent = parents[0]

        def mid_trial(ts):
            kids = children_of(parent.pid)
            return [t for t in training(ts) if worker_pid(t) in kids]

        found = self.wait_for(mid_trial, self.args.wait, "a worker of the parent mid-trial")
        kids = children_of(parent.pid)
        held = sorted(t.number for t in self.obs.trials()
                      if t.state.name == "RUNNING" and worker_pid(t) in kids)
        parent.killed, parent.children = True, kids
        parent.popen.send_signal(signal.SIGKILL)
        parent.popen.wait()
        parent.code = parent.popen.returncode
        self.run.say(f"SIGKILL the parent {parent.name} (pid {parent.pid}) of workers {kids}",
                     trials=held, mid_trial=bool(found))
        t = time.time()
        codes: dict[int, int] = {}  # this script is their subreaper: their exit codes come here
        while len(codes) < len(kids) and time.time() - t < self.args.wait:
            for k in kids:
                if k not in codes:
                    with contextlib.suppress(ChildProcessError):
                        pid, status = os.waitpid(k, os.WNOHANG)
                        if pid:
                            codes[k] = os.waitstatus_to_exitcode(status)
            self.tick()
            time.sleep(self.args.poll)
        left = [k for k in kids if k not in codes and alive(k)]
        took = round(time.time() - t, 1)
        self.run.say(f"the parent's workers {'ended' if not left else 'still alive: ' + str(left)}"
                     f" {took} s after", exit_codes=codes)
        lines = [ln for ln in parent.log.read_text(errors="replace").splitlines()
                 if PARENT_GONE in ln]
        self.parent = {"process": parent.name, "pid": parent.pid, "workers": kids,
                       "exit_codes": codes, "trials": held, "workers_left_alive": left,
                       "seconds_to_stop": took,
                       "lines": lines, "t": round(self.run.now(), 1)}
        repl = [self.run.start(f"{parent.name}-replacement{i + 1}") for i in range(len(kids))]
        self.parent["replacements"] = [r.name for r in repl]
        self.run.say(f"started {len(repl)} solo processes in place of the parent's workers",
                     pids=[r.pid for r in repl])

    def fill_disk(self) -> None:
        from tlsearch.search.attrs import ATTR

        before = {t.number for t in self.obs.trials() if t.state.name == "FAIL"}
        arts = self.mnt / "arts"
        arts.mkdir(exist_ok=True)
        written = fill(arts)
        self.run.disk_full = True
        self.run.say("filled the artifacts file system", bytes=written,
                     free_bytes=shutil.disk_usage(self.mnt).free)
        t = time.time()

        def weights_failed(ts):
            return [x for x in ts if x.state.name == "FAIL" and x.number not in before
                    and WEIGHTS_FAILURE in str(x.user_attrs.get(ATTR["failure"], ""))]

        self.wait_for(weights_failed, self.args.wait, "a trial to fail on its weights")
        end = time.time() + self.args.full_for
        while time.time() < end:
            self.tick()
            time.sleep(self.args.poll)
        free(arts)
        self.run.disk_full = False
        full_s = round(time.time() - t, 1)
        ts = self.obs.trials()
        failed = {x.number: x.user_attrs.get(ATTR["failure"]) for x in ts
                  if x.state.name == "FAIL" and x.number not in before}
        self.run.say(f"freed the artifacts file system after {full_s} s",
                     trials_failed_meanwhile=failed)
        self.disk = {"bytes_filled": written, "seconds_full": full_s, "failed": failed,
                     "t": round(self.run.now(), 1)}

    def schedule(self) -> list:
        return [(0.10, "SIGKILL a worker mid-trial", lambda: self.sigkill(1)),
                (0.20, "terminate every connection", lambda: self.terminate_connections(1)),
                (0.30, "kill a worker's parent", self.kill_parent),
                (0.45, "fill the artifacts file system", self.fill_disk),
                (0.65, "SIGKILL a worker mid-trial", lambda: self.sigkill(2)),
                (0.80, "terminate every connection", lambda: self.terminate_connections(2)),
                ]

    def go(self) -> list[str]:
        """Inject every fault at its share of the target; wait for the processes to end. The
        faults that could not be injected (the study finished first)."""
        missed = []
        faults = self.schedule()
        deadline = time.time() + self.args.timeout
        while faults and time.time() < deadline:
            ts = self.tick()
            share, what, act = faults[0]
            if self.finished(ts) >= share * self.target:
                faults.pop(0)
                self.run.say(f"{self.finished(ts)}/{self.target} finished: {what}")
                act()
                continue
            if not self.run.live():
                break
            time.sleep(self.args.poll)
        missed = [what for _, what, _ in faults]
        for what in missed:
            self.run.say(f"not injected: {what}")
        while self.run.live() and time.time() < deadline:
            self.tick()
            time.sleep(self.args.poll)
        self.tick()
        if self.run.live():
            self.run.say("timeout: killing the processes left")
            missed.append("the run ended within --timeout")
        return missed


# ---------------------------------------------------------------------------------------------
# the checks


def check(run: Run, chaos: Chaos, obs: Observer, artifacts: Path, target: int,
          missed: list[str]) -> tuple[dict, dict]:
    """Every expected property: name -> {held, detail}; and the figures measured."""
    from tlsearch.errors import UserError
    from tlsearch.search.artifacts import (ARTIFACT_ATTR, AtomicFileSystemArtifactStore,
                                           fetch_weights)
    from tlsearch.search.attrs import ATTR

    ts = obs.trials()
    by_number = {t.number: t for t in ts}
    states: dict[str, int] = {}
    for t in ts:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    failure = ATTR["failure"]
    failed = {t.number: t.user_attrs.get(failure) for t in ts if t.state.name == "FAIL"}
    retries = {t.number: t.system_attrs.get("failed_trial") for t in ts
               if "failed_trial" in t.system_attrs}
    checks: dict[str, dict] = {}

    def put(name: str, held: bool, detail) -> None:
        checks[name] = {"held": bool(held), "detail": detail}

    put("every fault injected", not missed, missed or "all 6")
    finished = count(ts, "COMPLETE", "PRUNED")
    put(f"exactly {target} finished trials", finished == target, finished)
    left = [t.number for t in ts if t.state.name in ("RUNNING", "WAITING")]
    put("none left RUNNING or WAITING", not left, left)

    killed = {}
    for k in chaos.killed:
        for n in k["trials"]:
            t = by_number[n]
            chain = [r for r, origin in retries.items() if origin == n]
            killed[n] = {"state": t.state.name, "reason": t.user_attrs.get(failure),
                         "retries": {r: by_number[r].state.name for r in chain}}
    ok = bool(killed) and all(
        v["state"] == "FAIL" and str(v["reason"]).startswith("worker died")
        and "COMPLETE" in v["retries"].values() for v in killed.values())
    put("every SIGKILLed trial FAIL with its reason, retried to COMPLETE",
        ok and len(chaos.killed) == 2, killed)

    p = chaos.parent
    stopped = {n: (by_number[n].state.name, by_number[n].user_attrs.get(failure))
               for n in p.get("trials", [])}
    # a trial in its last steps when the parent died may finish before its worker's next safe
    # point: that worker stops after it, which is what "at its next safe point" means
    put("the parent's workers stopped, one line each, their trials FAIL as interrupted "
        "(or finished first)",
        bool(p) and not p["workers_left_alive"] and len(p["lines"]) == len(p["workers"])
        and all(c == 130 for c in p["exit_codes"].values())
        and all(v == ("FAIL", "interrupted") or v[0] in ("COMPLETE", "PRUNED")
                for v in stopped.values()),
        {"lines": p.get("lines"), "trials": stopped, "exit_codes": p.get("exit_codes"),
         "alive": p.get("workers_left_alive")})

    weights_failed = {n: r for n, r in failed.items() if WEIGHTS_FAILURE in str(r)}
    put("the full disk failed trials with their reason, the workers started again",
        bool(weights_failed) and all(r["restarted"] for r in run.restarts),
        {"trials": list(weights_failed), "exits": run.restarts})

    put("every failed trial has a recorded reason", all(failed.values()),
        [n for n, r in failed.items() if not r])

    # a trial swept as dead whose process was never killed: its worker was alive, only late
    dead = {k["pid"] for k in chaos.killed} | set(p.get("workers", []))
    swept_alive = {t.number: t.user_attrs.get(failure) for t in ts if t.state.name == "FAIL"
                   and "swept" in str(t.user_attrs.get(failure))
                   and worker_pid(t) not in dead}
    put("no trial swept as dead while its worker lived", not swept_alive, swept_alive)

    tracebacks = {}
    for proc in run.procs:
        text = proc.log.read_text(errors="replace")
        if "Traceback" in text:
            i = text.index("Traceback")
            tracebacks[proc.name] = text[max(0, i - 300):i + 3000]
    put("no traceback in any output", not tracebacks, tracebacks)

    store = AtomicFileSystemArtifactStore(artifacts, create=False)
    bad = {}
    for t in ts:
        if t.state.name != "COMPLETE":
            continue
        if not t.user_attrs.get(ARTIFACT_ATTR):
            bad[t.number] = "no weights recorded"
            continue
        try:
            fetch_weights(t, store)  # refuses a missing file, or a size or SHA-256 that differ
        except UserError as e:
            bad[t.number] = str(e)
    put("every COMPLETE trial's weights present, size and SHA-256 as recorded", not bad, bad)

    last = {p.name: p.code for p in run.procs if not p.killed and not any(
        r["name"] == p.name for r in run.restarts)}
    put("every process of the last generation exited 0", all(c == 0 for c in last.values()),
        last)

    figures = {
        "target": target, "finished": finished, "states": states, "trials": len(ts),
        "failed": failed, "retries": retries,
        "processes_started": len(run.procs),
        "sigkilled": chaos.killed, "terminations": chaos.terminations,
        "connections_terminated": sum(x["connections"] for x in chaos.terminations),
        "most_connections_seen": chaos.most_connections,
        "disk_full": chaos.disk, "parent_kill": chaos.parent, "exits_restarted": run.restarts,
        "weights_checked": sum(t.state.name == "COMPLETE" for t in ts),
    }
    return checks, figures


def markdown(result: dict) -> str:
    f, s = result["figures"], result["settings"]
    lines = [f"# Chaos on one PostgreSQL study ({s['workers']} workers x "
             f"{s['trials_per_worker']} trials, tiny image twin)", "",
             f"{result['date']}; {s['cpus']} CPUs; load average (1 min) during the run: "
             f"{result['load']['min']:.1f} to {result['load']['max']:.1f} (mean "
             f"{result['load']['mean']:.1f}); {result['seconds']:.0f} s", "",
             "| expected | held | detail |", "|---|---|---|"]
    for name, c in result["checks"].items():
        detail = json.dumps(c["detail"], default=str)
        lines.append(f"| {name} | {'yes' if c['held'] else '**no**'} | "
                     f"{detail[:400].replace('|', '/')} |")
    lines += ["", f"finished {f['finished']} of {f['trials']} trials; states {f['states']}; "
              f"{len(f['retries'])} retries; {f['connections_terminated']} connections "
              f"terminated ({[x['connections'] for x in f['terminations']]}); "
              f"{f['processes_started']} processes started", "",
              "| failed trial | reason |", "|---|---|"]
    lines += [f"| {n} | {r} |" for n, r in f["failed"].items()]
    lines += ["", "| t (s) | event |", "|---|---|"]
    for e in result["timeline"]:
        extra = "; ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "event"))
        lines.append(f"| {e['t']} | {e['event']}{'; ' + extra if extra else ''} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the study, logs, results")
    ap.add_argument("--tiny", action="store_true", help="4 workers x 5 trials (checks the script)")
    ap.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    ap.add_argument("--trials-per-worker", type=int, default=25, help="default 25")
    ap.add_argument("--fleet", type=int, default=2,
                    help="workers inside the `tlsearch run --workers N` parent that is killed")
    ap.add_argument("--pg", default=PG, help="PostgreSQL URL (a fresh schema is made in it)")
    ap.add_argument("--heartbeat", default="1,4", help="interval,grace_period in s (default 1,4)")
    ap.add_argument("--threads", type=int, default=1, help="TensorFlow threads a process")
    ap.add_argument("--tmpfs-size", default="20m", help="the artifacts tmpfs (default 20m)")
    ap.add_argument("--full-for", type=float, default=2.0,
                    help="seconds the disk stays full after the first trial fails on it")
    ap.add_argument("--poll", type=float, default=0.3)
    ap.add_argument("--wait", type=float, default=180, help="the longest wait for one fault")
    ap.add_argument("--max-restarts", type=int, default=12,
                    help="the most processes started again after an unforeseen exit")
    ap.add_argument("--timeout", type=float, default=3600, help="the whole run, in seconds")
    ap.add_argument("--keep-schema", action="store_true", help="keep the study's schema")
    args = ap.parse_args(argv)
    if args.tiny:
        args.workers, args.trials_per_worker = 4, 5
    if not 1 <= args.fleet < args.workers:
        ap.error("--fleet must be at least 1 and below --workers")
    target = args.workers * args.trials_per_worker
    interval, grace = (int(x) for x in args.heartbeat.split(","))

    from conftest import make_image_folder, write_study

    out = args.out.resolve()
    work, logs, mnt = out / "work", out / "logs", out / "artifacts-fs"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    for d in (work, logs, mnt):
        d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_size}", "tmpfs",
                        str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"cannot mount a tmpfs at {mnt} (needs root): {r.stderr.strip()}", file=sys.stderr)
        return 2
    # SIGTERM (a timeout) ends the run as Ctrl-C does: its processes killed, the tmpfs unmounted
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    # the workers of the parent killed become this process's children: their exit codes are seen
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER (Linux)
    schema = f"chaos_{uuid.uuid4().hex[:10]}"
    try:
        admin(args.pg, f'CREATE SCHEMA "{schema}"')
    except Exception as e:
        subprocess.run(["umount", str(mnt)])
        print(f"PostgreSQL does not answer at {args.pg}: {str(e).splitlines()[0]}",
              file=sys.stderr)
        return 2
    url = f"{args.pg}?options=-csearch_path%3D{schema}"
    app = f"tls-chaos-{os.getpid()}"
    make_image_folder(work / "images")
    study = write_study(work / "study.yaml", n_trials=target,
                        heartbeat={"interval": interval, "grace_period": grace},
                        artifacts=str(mnt / "arts"))
    run = Run(study, url, app, logs, args.threads)
    obs = Observer(url, "tiny")
    chaos = Chaos(run, obs, args, mnt, app, target)
    uptime = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    run.say(f"{args.workers} workers x {args.trials_per_worker} trials on schema {schema}; "
            f"{uptime[0]}")
    checks: dict = {}
    figures: dict = {}
    try:
        run.start("parent", "--workers", str(args.fleet), role="parent")
        for i in range(args.workers - args.fleet):
            run.start(f"w{i + 1}")
        run.say(f"started {args.workers - args.fleet} solo processes and a parent of "
                f"{args.fleet} workers")
        missed = chaos.go()
        seconds = run.now()
        run.say(f"every process ended ({seconds:.0f} s)")
        checks, figures = check(run, chaos, obs, mnt / "arts", target, missed)
    finally:
        run.stop_all()
        uptime.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
        subprocess.run(["umount", "-l", str(mnt)])
        if not args.keep_schema:
            try:
                admin(args.pg, f'DROP SCHEMA "{schema}" CASCADE')
            except Exception as e:
                print(f"note: schema {schema} not dropped: {e}", file=sys.stderr)
    load = chaos.load or [os.getloadavg()[0]]
    result = {
        "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
        "settings": {"workers": args.workers, "trials_per_worker": args.trials_per_worker,
                     "fleet": args.fleet, "heartbeat": {"interval": interval,
                                                        "grace_period": grace},
                     "threads_per_process": args.threads, "tmpfs_size": args.tmpfs_size,
                     "cpus": os.cpu_count(), "schema": schema},
        "uptime": uptime, "seconds": round(seconds, 1),
        "load": {"min": min(load), "max": max(load), "mean": sum(load) / len(load)},
        "checks": checks, "figures": figures, "timeline": run.timeline,
    }
    # the results name the output folder OUT: they are kept, and the folder is this machine's
    (out / "results.json").write_text(
        json.dumps(result, indent=2, default=str).replace(str(out), "OUT") + "\n")
    (out / "results.md").write_text(markdown(result).replace(str(out), "OUT"))
    print(markdown(result))
    failed = [name for name, c in checks.items() if not c["held"]]
    if failed:
        print("FAILED:\n" + "\n".join(
            f"  - {name}: {json.dumps(checks[name]['detail'], default=str)[:2000]}"
            for name in failed), file=sys.stderr)
        return 1
    print("every expected property held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
