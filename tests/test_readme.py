"""Every code block of README.md runs, or is checked, as written.

The blocks run in a scratch folder laid out as the README assumes (``studies/quickstart.yaml``
with some of the quickstart's own images in ``studies/data/fashion-sample``, ``study.yaml``,
``export/fashion``, ``shoe.jpg``, ``photos/``), with tiny studies (``tiny_cnn``, ``tiny_bert``) in
place of the real backbones. Each Python block runs in a fresh interpreter, as pasted, with
nothing defined for it; a block preceded by ``<!-- not run: why -->`` is skipped, and the reason
must be given. Each block is matched to one check by its first line; a block that no check claims
fails the test, so a new block comes with its check. What cannot run here (Docker, curl against a
server, PostgreSQL, a cluster) is checked against the code: the subcommands and flags exist, the
SavedModel has the signature the request names and takes the body the README builds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, make_image_folder, write_study
from tlsearch.cli import main
from tlsearch.config import parse_config

README = (REPO / "README.md").read_text()
BLOCKS = [(lang, body) for lang, body in
          re.findall(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)]
#: Python blocks with the reason they are not run, if any (``<!-- not run: why -->`` before them)
PYTHON = [(why, body) for why, body in
          re.findall(r"^(?:<!-- not run: (.+?) -->\n)?```python\n(.*?)^```", README, re.S | re.M)]
#: classes of the quickstart's images the scratch folder holds (files the README names among them)
CLASSES = ("bag", "sandal", "sneaker")
SAMPLE = REPO / "studies" / "data" / "fashion-sample"


def _first(body: str) -> str:
    return body.strip().splitlines()[0]


# ------------------------------------------------------------------------------------- layout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder laid out as the README assumes, with a finished tiny study and its export."""
    root = tmp_path_factory.mktemp("readme")
    old, cache = Path.cwd(), os.environ.get("TLSEARCH_CACHE_DIR")
    os.chdir(root)
    os.environ["TLSEARCH_CACHE_DIR"] = str(root / "cache")
    try:
        for c in CLASSES:  # the quickstart's own images: the README names some of them
            dest = root / "studies" / "data" / "fashion-sample" / c
            dest.mkdir(parents=True)
            for f in sorted((SAMPLE / c).iterdir())[:12]:
                shutil.copy(f, dest / f.name)
        write_study(root / "studies" / "quickstart.yaml", name="quickstart", n_trials=2,
                    data={"path": "data/fashion-sample", "validation_split": 0.25,
                          "image_size": 32},
                    search={"unfreeze_blocks": {"low": 0, "high": 1}, "head_width": [8]})
        make_image_folder(root / "images", classes=CLASSES, per_class=8)
        write_study(root / "study.yaml", name="pets", n_trials=2)
        shutil.copytree(root / "images" / "sneaker", root / "photos")
        shutil.copy(root / "photos" / "sneaker_000.png", root / "shoe.jpg")
        Image.open(root / "shoe.jpg").convert("RGB").save(root / "shoe.jpg", format="JPEG")
        log = io.StringIO()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            assert main(["run", "studies/quickstart.yaml"]) == 0  # no terminal: plain lines
        (root / "run.log").write_text(log.getvalue())
        log = io.StringIO()
        with contextlib.redirect_stderr(log):
            assert main(["export", "studies/quickstart.yaml", "--out", "export/fashion"]) == 0
        (root / "export.log").write_text(log.getvalue())
        yield root
    finally:
        os.chdir(old)
        if cache is not None:
            os.environ["TLSEARCH_CACHE_DIR"] = cache


@pytest.fixture(scope="module")
def text_export(site):
    """A tiny text study's export, for what the README says of text models."""
    from test_text import _snippets

    _snippets(48).to_csv(site / "reviews.csv", index=False)
    study = write_study(site / "text.yaml", name="reviews", n_trials=1,
                        data={"path": "reviews.csv", "image_size": 32}, backbones=["tiny_bert"],
                        training={"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 12},
                        search={"unfreeze_blocks": 1, "head_width": [8], "max_length": 16})
    assert main(["run", str(study)]) == 0
    assert main(["export", str(study), "--out", "export/reviews"]) == 0
    return site / "export" / "reviews"


def _help(args: list[str], capsys) -> str:
    assert main([*args, "--help"]) == 0
    return capsys.readouterr().out


def _check_flags(argv: list[str], capsys) -> None:
    """``tlsearch SUB ... --flag`` : the subcommand exists and takes every flag given."""
    sub = argv[0]
    text = _help([sub], capsys)
    for a in argv[1:]:
        if a.startswith("--"):
            assert a.split("=")[0] in text, f"`tlsearch {sub}` has no {a}"


# ------------------------------------------------------------------------------ shell blocks

#: commands the README shows that are not tlsearch's; what each is checked against instead
EXTERNAL = ("make", ".", "docker", "curl", "mkdir", "unzip", "cd", "sudo", "export", "srun",
            "#!/bin/bash", "#SBATCH", "-v", "-e", "-d", "tensorflow/serving", "\\\"")


def _commands(body: str) -> list[str]:
    """Shell lines with continuations joined and comments dropped."""
    out, cur = [], ""
    for line in body.splitlines():
        if not cur and line.lstrip().startswith("#") and not line.startswith("#!") \
                and not line.startswith("#SBATCH"):
            continue
        cur += line.rstrip("\\") + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return [c for c in out if c]


def _run_tlsearch(cmd: str, site: Path, capsys) -> None:
    cmd = cmd.split(" | ")[0]  # `| jq ...`: the tlsearch part
    cmd = re.sub(r"\s+#.*$", "", cmd)
    if cmd.startswith("tlsearch init ") and " && " in cmd:
        first, *rest = cmd.split(" && ")
        _check_init(shlex.split(first)[1:], site, capsys)
        for part in rest:  # the study `init` wrote: test_init.py runs one (slow: real weights)
            _check_flags(shlex.split(part)[1:], capsys)
        return
    argv = shlex.split(cmd)[1:]
    sub = argv[0]
    if sub in ("dashboard", "storage-proxy", "serve") or "--workers" in argv or "chest-xray" in cmd \
            or "flowers" in cmd:
        _check_flags(argv, capsys)  # serves forever / starts processes / data not here
        if "chest-xray" in cmd:  # the shipped study file at least is valid
            assert main(["validate", str(REPO / "studies" / "chest-xray-resnet50.yaml")]) == 0
        return
    if sub == "export" and (site / argv[argv.index("--out") + 1]).exists():
        argv.append("--force")  # the fixture wrote it already
    capsys.readouterr()
    assert main(argv) == 0, f"`{cmd}` failed: {capsys.readouterr().err[-2000:]}"
    got = capsys.readouterr()
    if sub == "predict" and "--out" not in argv:
        assert got.out.strip(), cmd


def _check_init(argv: list[str], site: Path, capsys) -> None:
    """`tlsearch init data/`, in a folder of its own with the quickstart's images as `data/`:
    the study file it writes validates (test_init.py runs one such study)."""
    first = site / "first"
    shutil.rmtree(first, ignore_errors=True)
    shutil.copytree(site / "studies" / "data" / "fashion-sample", first / "data")
    old = Path.cwd()
    os.chdir(first)
    try:
        assert main(argv) == 0, capsys.readouterr().err[-2000:]
        assert main(["validate", "study.yaml"]) == 0
    finally:
        os.chdir(old)
    raw = yaml.safe_load((first / "study.yaml").read_text())
    assert raw["data"]["path"] == "data" and raw["backbones"] == ["efficientnet_lite0"]


def _check_body(block: str, site: Path) -> None:
    """The request body the README builds with Python: run as written, then given to the
    SavedModel's default signature as TensorFlow Serving would (one instance a row)."""
    import tensorflow as tf

    script = block[:block.index("> body.json") + len("> body.json")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", script], cwd=site, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    instances = json.loads((site / "body.json").read_text())["instances"]
    loaded = tf.saved_model.load(str(site / "export" / "fashion" / "serving" / "1"))
    out = loaded.signatures["serving_default"](image=tf.constant(instances, tf.float32))
    assert out["probabilities"].shape == (1, len(CLASSES))


def _check_external(cmd: str, site: Path, capsys) -> None:
    word = cmd.split()[0]
    if word == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
        assert cmd.split()[1] in targets, cmd
    elif word == ".":
        assert "VENV ?= .venv" in (REPO / "Makefile").read_text()
    elif word == "docker":  # the folder it mounts holds a SavedModel at version 1
        m = re.search(r'"\$PWD/([^:]+):', cmd)
        assert m and (site / m.group(1) / "1" / "saved_model.pb").is_file(), cmd
    elif word == "curl":
        _check_request(cmd, site)
        if "-d @" in cmd:  # the file the block before it wrote
            assert (site / cmd.split("-d @")[1].split()[0]).is_file(), cmd
    elif word == "export":  # the environment variable tlsearch reads
        name = cmd.split()[1].split("=")[0]
        assert name in (REPO / "tlsearch" / "commands" / "run.py").read_text()
    elif word == "srun":
        _check_flags(shlex.split(cmd)[2:], capsys)
    else:
        assert word in EXTERNAL, f"README shell line not checked: {cmd}"


def _check_serve_request(cmd: str, site: Path) -> None:
    """A request to `tlsearch serve`: the route exists for its method, and a JSON body holds the
    key the served model's modality takes."""
    import tlsearch
    from tlsearch.serve.app import create_app

    app = create_app(tlsearch.load(site / "export" / "fashion"))
    path = re.search(r":8000(/\w+)", cmd).group(1)
    method = "POST" if ("--data-binary" in cmd or " -d " in cmd) else "GET"
    assert any(r.path == path and method in r.methods for r in app.routes), cmd
    if " -d " in cmd:
        assert "application/json" in cmd and '{"instances": [' in cmd, cmd
    if "--data-binary @" in cmd:
        assert (site / cmd.split("@")[1].split()[0]).is_file(), cmd


def _check_request(cmd: str, site: Path) -> None:
    """A TensorFlow Serving request: the SavedModel has the signature and input it names."""
    if ":8000/" in cmd:
        return _check_serve_request(cmd, site)
    import tensorflow as tf

    loaded = tf.saved_model.load(str(site / "export" / "fashion" / "serving" / "1"))
    name = re.search(r'signature_name\\?": \\?"(\w+)', cmd)
    sig = loaded.signatures[name.group(1) if name else "serving_default"]
    inputs = sig.structured_input_signature[1]
    if name:
        assert "b64" in cmd and inputs["image_bytes"].dtype == tf.string
    else:
        assert list(inputs) == ["image"] and inputs["image"].shape.rank == 4
    assert list(sig.structured_outputs) == ["probabilities"]


def test_shell_blocks_run(site, capsys):
    seen = 0
    for lang, body in BLOCKS:
        if lang != "bash" and not (lang == "" and body.startswith("tlsearch run")):
            continue
        if body.startswith("python -c"):  # builds a request body, then sends it
            _check_body(body, site)
            body = body[body.index("> body.json") + len("> body.json"):].strip() + "\n"
        commands = _commands(body)
        if commands[0].startswith("curl") and "-d @" not in body and ":8000/" not in body:
            commands = [body]  # one request, several lines
        for cmd in commands:
            seen += 1
            if cmd.startswith("tlsearch "):
                _run_tlsearch(cmd, site, capsys)
            else:
                _check_external(cmd, site, capsys)
    assert seen >= 20


# ------------------------------------------------------------------------------ yaml blocks


def _study_with(fragment: dict, site: Path) -> dict:
    base = yaml.safe_load((site / "study.yaml").read_text())
    for k, v in fragment.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def test_yaml_blocks_are_valid(site, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "secret")
    for lang, body in BLOCKS:
        if lang != "yaml":
            continue
        raw = yaml.safe_load(body)
        if "apiVersion" in raw:  # the Kubernetes Job: its command is a valid tlsearch command
            cmd = raw["spec"]["template"]["spec"]["containers"][0]["command"]
            assert cmd[:2] == ["tlsearch", "run"] and "--workers" in cmd
            continue
        full = raw if "name" in raw else _study_with(raw, site)
        cfg = parse_config(full, source="README.md", base_dir=site)
        if "storage" in raw:
            from tlsearch.runner.storage import redact_url

            assert "secret" not in redact_url(cfg.storage_url)
        if raw.get("backbones") == ["minilm_l6"]:
            assert cfg.data.text_column == "text"


def test_class_weight_omitted_means_no_weighting(site):
    from tlsearch.config import load_config
    from tlsearch.search.inputs import class_weight_map
    from tlsearch.search.inputs import check_inputs

    cfg = load_config(site / "study.yaml")
    assert cfg.training.class_weight is None
    assert class_weight_map(cfg, check_inputs(cfg)[1]) is None


# ---------------------------------------------------------------------------- python blocks


def _fresh(code: str, cwd: Path, pythonpath: str) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter, as a user pastes it: nothing defined beforehand."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True)


def _installed() -> str:
    """The path a user's installed tlsearch is on: the repository, then what the tests have."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


@pytest.mark.slow
def test_python_blocks_run_as_pasted(site):
    """Each Python block, in order, in its own fresh interpreter in the scratch folder."""
    import optuna

    # every `not run` note sits right before a Python block, and says why
    assert README.count("<!-- not run:") == sum(bool(why.strip()) for why, _ in PYTHON)
    ran = 0
    for why, body in PYTHON:
        if why or "tf.saved_model.load" in body:
            continue  # plain TensorFlow, without tlsearch: test_savedmodel_from_plain_tensorflow
        if body.lstrip().startswith("# tlsearch_small_cnn.py"):
            continue  # another package's module: test_plugins.py installs and runs it
        r = _fresh(body, site, _installed())
        assert r.returncode == 0, f"README block failed:\n{body}\n{r.stderr[-3000:]}"
        ran += 1
    assert ran == 5
    pets = optuna.load_study(study_name="pets", storage=f"sqlite:///{site / 'pets.db'}")
    finished = [t for t in pets.trials if t.state.is_finished()]
    assert len(finished) >= 2 + 5  # `tlsearch.run` twice, then the user's CMA-ES study
    assert (site / "kt-model" / "metadata.json").is_file()  # KerasTuner's export


def test_python_blocks_need_nothing_defined():
    """Every name a Python block uses is defined in that block or imported there: pasted alone
    into a fresh interpreter, none raises NameError (the runs above prove it for those run)."""
    import builtins
    import symtable

    for why, body in PYTHON:
        table = symtable.symtable(body, "README.md", "exec")
        defined = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
        used = {s.get_name() for s in table.get_symbols() if s.is_referenced()}
        inner = list(table.get_children())
        while inner:  # functions and comprehensions: the module's names they read
            child = inner.pop()
            used |= {s.get_name() for s in child.get_symbols() if s.is_global()}
            inner += child.get_children()
        missing = used - defined - set(dir(builtins))
        assert not missing, f"README block uses {sorted(missing)} without defining them:\n{body}"


_PLAIN = """
import json, sys
import numpy as np
{code}
probs = out["probabilities"].numpy()
print(json.dumps(list(probs.shape)))
"""


def _plain_tf(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ""}  # plain TensorFlow: no tlsearch on the path
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True)


def test_savedmodel_from_plain_tensorflow(site, text_export):
    block = next(b for lang, b in BLOCKS if lang == "python" and "tf.saved_model.load" in b)
    r = _plain_tf(_PLAIN.format(code=block), site)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.splitlines()[-1]) == [2, len(CLASSES)]
    # text: the same block, strings in, and export/reviews
    texts = block.replace("export/fashion", "export/reviews").replace(
        "tf.constant(images, tf.float32)", 'tf.constant(["a good film", "dull"])')
    r = _plain_tf(_PLAIN.format(code=texts), site)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.splitlines()[-1]) == [2, 2]
    # and what the README warns of: without tensorflow_text, loading a text model fails
    r = _plain_tf(_PLAIN.format(code=texts.replace("import tensorflow_text", "pass  #")), site)
    assert r.returncode != 0 and "RegexSplitWithOffsets" in r.stderr


# --------------------------------------------------------------------------- output samples


def test_output_samples_match_the_code(site, text_export, capsys):
    plain = [b for lang, b in BLOCKS if lang == ""]
    for body in plain:
        first = _first(body)
        if first.startswith("tlsearch run"):
            continue  # a command: test_shell_blocks_run runs it
        elif first.startswith("error: study.yaml is not a valid study file"):
            _check_error_sample(body, site, capsys)
        elif first.startswith("verdict:"):
            src = (REPO / "tlsearch" / "report" / "sections.py").read_text()
            assert "fine-tuning pays" in src and "feature extraction is enough" in src
            assert "no clear difference" in src
        elif first.startswith("exporting best trial"):
            _check_export_sample(body, site, capsys)
        elif first == "tlsearch/":
            _check_tree(body)
        elif first.startswith(("computing features:", "stopped:")):
            _check_run_sample(body, site)
        else:
            pytest.fail(f"README block not checked: {first}")


def _check_error_sample(body: str, site: Path, capsys) -> None:
    good = yaml.safe_load((site / "study.yaml").read_text())
    bad = {**good, "search": {**good["search"], "dropout": {"low": 0.6, "high": 0.1}}}
    bad["trainig"] = bad.pop("training")
    (site / "bad.yaml").write_text(yaml.safe_dump(bad))
    capsys.readouterr()
    assert main(["validate", "bad.yaml"]) == 2
    err = capsys.readouterr().err.splitlines()
    want = body.splitlines()
    assert len(err) == len(want)  # every problem, and nothing else
    for got, line in zip(err[1:], want[1:]):
        head, _, tail = line.partition("...")
        assert got.startswith(head) and got.endswith(tail), (got, line)
    # the names, once the form is right: as the sentence after the block says
    said = re.search(r"``- (`backbones\[1\]\.name`:.*?)``", README, re.S).group(1)
    (site / "bad.yaml").write_text(yaml.safe_dump({**good, "backbones": ["tiny_cnn", "resnet5"]}))
    assert main(["validate", "bad.yaml"]) == 2
    assert " ".join(said.split()) in capsys.readouterr().err


def _check_export_sample(body: str, site: Path, capsys) -> None:
    got = [line for line in (site / "export.log").read_text().splitlines() if line.strip()]
    want = [line for line in body.splitlines() if line.strip()]
    assert got[0].startswith("exporting best trial #") and "at its best epoch: step" in got[0]
    assert [g.split()[0] for g in got[1:-1]] == [w.split()[0] for w in want[1:-1]]
    assert [g.split()[1] for g in got[1:-1]] == [w.split()[1] for w in want[1:-1]]
    assert got[-1].startswith("wrote ")
    # text models: the two formats they cannot have, one line each, as the README says
    meta = json.loads((site / "export" / "reviews" / "metadata.json").read_text())["formats"]
    assert meta["onnx"]["reason"] == "not available for text models (tokenizer ops)"
    assert "not available for text models (tokenizer ops)" in " ".join(README.split())


def _check_run_sample(body: str, site: Path) -> None:
    """Lines `tlsearch run` prints without a terminal: each sample line has its like in the log
    (the same words up to the first number)."""
    log = (site / "run.log").read_text()
    assert "\x1b[" not in log  # no control codes
    lines = [" ".join(got.split()) for got in log.splitlines()]
    for line in body.splitlines():
        words = []
        for w in line.split():
            if any(c.isdigit() for c in w):
                break
            words.append(w)
        if line.startswith("resume:"):  # said when trials are left; this run finished them
            src = (REPO / "tlsearch" / "runner" / "stop.py").read_text()
            assert "run the same command again" in src
            continue
        head = " ".join(words[:1] if line.startswith("stopped:") else words)
        assert any(got.startswith(head) for got in lines), (head, log[-3000:])


def _check_tree(body: str) -> None:
    """Each module and folder the Development map names exists."""
    for line in body.splitlines()[1:]:
        top = re.match(r"^  ([a-z_]+(?:\.py|/))(?=\s|$)", line)  # the left column
        if top:
            assert (REPO / "tlsearch" / top.group(1)).exists(), top.group(1)
        for name in re.findall(r"\b([a-z_]+\.py)\b", line):
            hits = list((REPO / "tlsearch").rglob(name))
            assert hits, f"README names {name}, which tlsearch/ does not have"


def test_every_block_is_claimed():
    """Each block goes to one of the checks above (a new kind of block needs its own)."""
    for lang, body in BLOCKS:
        first = _first(body)
        if lang == "toml":  # the backbone package's pyproject.toml: test_plugins.py installs it
            assert first == "# pyproject.toml", first
            continue
        assert lang in ("", "bash", "yaml", "python"), (lang, first)
