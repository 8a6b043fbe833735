"""The one registry mechanism: names, refusals, and third-party entries through entry points.

A fake installed package is a ``<name>-<version>.dist-info`` folder (with ``entry_points.txt``)
and a module beside it, in a folder put on ``sys.path``: what ``pip install --target`` leaves.
Each test uses its own entry-point group, so the real registries are not touched in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from conftest import REPO
from tlsearch._registry import PluginWarning, Registry


def fake_package(site: Path, dist: str, entry_points: dict[str, dict[str, str]],
                 modules: dict[str, str], version: str = "0.1.0") -> Path:
    """An installed package ``dist`` in ``site``: its entry points ``{group: {name: value}}`` and
    its modules ``{module name: source}``."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
        for group, eps in entry_points.items()))
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    return site


@pytest.fixture
def group(monkeypatch, tmp_path):
    """A fresh entry-point group, a registry of it holding one built-in entry, and a site folder
    on sys.path where fake packages go."""
    name = f"tlsearch.test_{uuid.uuid4().hex[:8]}"
    reg: Registry[str] = Registry("gadget", name)
    reg.register("builtin", "B")
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    # the modules below find the registry through this module attribute
    mod = f"_registry_under_test_{name.rsplit('_', 1)[1]}"
    monkeypatch.setitem(sys.modules, mod, type(sys)(mod))
    sys.modules[mod].reg = reg  # type: ignore[attr-defined]
    return name, reg, site, mod


def test_names_lookups_and_refusals():
    reg: Registry[int] = Registry("gadget", f"tlsearch.test_{uuid.uuid4().hex[:8]}")
    reg.register("widget", 1)
    reg.register("sprocket", 2)
    assert reg.names() == ["sprocket", "widget"]
    assert list(reg) == ["widget", "sprocket"]  # registration order
    assert reg["widget"] == 1 and "sprocket" in reg and "gear" not in reg and len(reg) == 2
    assert reg.get("gear") is None and reg.get("gear", 7) == 7  # a Mapping's get
    with pytest.raises(ValueError, match="gadget 'widget' is already registered"):
        reg.register("widget", 3)
    assert reg["widget"] == 1
    with pytest.raises(KeyError, match="unknown gadget 'widgte'; did you mean 'widget'"):
        reg["widgte"]
    with pytest.raises(KeyError, match=r"unknown gadget 'zz'; expected one of \['sprocket', "):
        reg["zz"]
    reg["widget"] = 5  # replacing on purpose (as a test's monkeypatch does)
    del reg["sprocket"]
    assert dict(reg) == {"widget": 5}


def test_plugins_load_on_first_use_as_module_or_function(group):
    name, reg, site, mod = group
    fake_package(site, "gadgets-extra", {name: {"mod": "gadgets_mod", "fn": "gadgets_fn:setup"}},
                 {"gadgets_mod": f"import {mod}\n{mod}.reg.register('from_module', 'M')\n",
                  "gadgets_fn": f"""
                      import {mod}
                      def setup():
                          assert 'builtin' in {mod}.reg  # a plugin may look entries up
                          {mod}.reg.register('from_function', 'F')
                      """}, version="2.0")
    assert "gadgets_mod" not in sys.modules  # nothing loaded before first use
    assert reg.names() == ["builtin", "from_function", "from_module"]
    assert reg["from_module"] == "M" and reg["from_function"] == "F"
    assert reg.origin("from_module") == ("gadgets-extra", "2.0")
    assert reg.origin("builtin") is None
    assert list(reg)[0] == "builtin"  # built-ins first


def test_a_broken_plugin_warns_naming_its_package_and_the_rest_still_works(group):
    name, reg, site, mod = group
    fake_package(site, "gadgets-good", {name: {"good": "gadgets_good"}},
                 {"gadgets_good": f"import {mod}\n{mod}.reg.register('good', 'G')\n"})
    fake_package(site, "gadgets-broken", {name: {"broken": "gadgets_broken",
                                                 "odd": "gadgets_odd:VALUE"}},
                 {"gadgets_broken": f"import {mod}\n{mod}.reg.register('half', 'H')\n"
                                    f"import a_module_nobody_installed\n",
                  "gadgets_odd": "VALUE = 3\n"})
    fake_package(site, "gadgets-clash", {name: {"clash": "gadgets_clash"}},
                 {"gadgets_clash": f"import {mod}\n{mod}.reg.register('builtin', 'C')\n"})
    with pytest.warns(PluginWarning) as caught:
        assert reg.names() == ["builtin", "good"]  # 'half' went with its failed plugin
    messages = sorted(str(w.message) for w in caught)  # by entry point: broken, clash, odd
    assert len(messages) == 3, messages
    assert "package 'gadgets-broken'" in messages[0]
    assert "ModuleNotFoundError: No module named 'a_module_nobody_installed'" in messages[0]
    assert "package 'gadgets-clash'" in messages[1]
    assert "ValueError: gadget 'builtin' is already registered" in messages[1]
    assert "gadgets_odd:VALUE is neither a module nor a function taking nothing" in messages[2]
    assert reg["good"] == "G" and reg["builtin"] == "B"  # a built-in is never replaced


def test_a_broken_backbone_package_leaves_tlsearch_backbones_working(tmp_path):
    """The real command, in a fresh process: a package whose backbone entry point fails to import
    is named in a warning; every other backbone is still listed and the command succeeds."""
    site = fake_package(tmp_path / "site", "tlsearch-broken-backbone",
                        {"tlsearch.backbones": {"broken": "tlsearch_broken_backbone"}},
                        {"tlsearch_broken_backbone": "raise RuntimeError('weights server down')\n"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    r = subprocess.run([sys.executable, "-m", "tlsearch.cli", "backbones"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tiny_cnn" in r.stdout and "resnet50" in r.stdout
    assert "PluginWarning" in r.stderr and "'tlsearch-broken-backbone'" in r.stderr
    assert "RuntimeError: weights server down" in r.stderr


def test_a_plugin_backbones_package_version_keys_its_cached_features(monkeypatch):
    """Features computed by another package's code are not reused after that package changes
    (a new version), as they are not across Keras versions; tlsearch's own keys stay as they
    were."""
    import tlsearch.backbones
    from tlsearch.backbones.frozen import frozen_part
    from tlsearch.config import BackboneEntry

    def key(plugin):
        monkeypatch.setattr(tlsearch.backbones, "origin", lambda name: plugin)
        return frozen_part(BackboneEntry(name="tiny_cnn"), weights="random", image_size=32,
                           data="d").key_parts()

    own, v1, v2 = key(None), key(("tlsearch-small-cnn", "0.1.0")), key(("tlsearch-small-cnn", "0.2"))
    assert "tlsearch-small-cnn" not in own["versions"]
    assert v1["versions"]["tlsearch-small-cnn"] == "0.1.0"
    assert own != v1 != v2
    assert {k: v for k, v in v1.items() if k != "versions"} == \
        {k: v for k, v in own.items() if k != "versions"}


def test_each_of_the_four_registries_takes_entries_from_its_own_group(tmp_path):
    """One installed package with an entry point in each group the README names; a fresh
    process sees each entry where tlsearch looks it up."""
    site = fake_package(tmp_path / "site", "tlsearch-fakes", {
        "tlsearch.backbones": {"net": "fake_net"},
        "tlsearch.modalities": {"audio": "fake_audio"},
        "tlsearch.data_formats": {"rows": "fake_rows"},
        "tlsearch.export_formats": {"fmt": "fake_fmt:setup"},
    }, {
        "fake_net": """
            from tlsearch.backbones import BackboneSpec, register
            register(BackboneSpec(name="fake_net", builder=print, default_weights=None))
            """,
        "fake_audio": """
            from tlsearch.modalities.registry import Modality, register
            class Audio(Modality):
                name = "audio"
            register(Audio())
            """,
        "fake_rows": """
            from tlsearch.data.formats import register_format
            @register_format("rows", suffixes=(".rows",))
            def load(cfg, path, image_size):
                raise NotImplementedError
            """,
        "fake_fmt": """
            from tlsearch.export.formats import Format, register
            def setup():
                register(Format("fake", "model.fake", lambda *a: {"skipped": "a fake"}))
            """,
    })
    code = textwrap.dedent("""
        import json
        from pathlib import Path
        import tlsearch.backbones, tlsearch.data, tlsearch.modalities
        from tlsearch.export.exporter import FORMATS
        print(json.dumps({
            "backbone": tlsearch.backbones.get("fake_net").name,
            "origin": tlsearch.backbones.origin("fake_net"),
            "modalities": tlsearch.modalities.names(),
            "format": tlsearch.data.infer_format(Path("table.rows")),
            "export": list(FORMATS),
        }))
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr[-3000:]
    assert json.loads(r.stdout) == {
        "backbone": "fake_net", "origin": ["tlsearch-fakes", "0.1.0"],
        "modalities": ["audio", "image", "text"], "format": "rows",
        "export": ["onnx", "litert", "fake"]}
