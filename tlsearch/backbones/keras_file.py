"""A user's own saved Keras model as a backbone (an in-house pretrained network): a family whose
spec is made per study-file entry, since its name, preprocessing and blocks come from the entry.

The file is loaded with ``safe_mode=True``: a ``.keras`` file that carries Python code (a ``Lambda``
layer's bytecode) is refused rather than executed. The network is re-wired onto a fresh input as
copies of its layers (same configuration, same weights), so that it is one flat graph that can be
frozen, unfrozen and cut block by block: a layer called a second time would keep its first graph
as its ``output``, which a cut below the top blocks reads.
"""

from __future__ import annotations

from pathlib import Path

from tlsearch.backbones.base import file_sha256
from tlsearch.backbones.registry import BackboneSpec, BuildRequest
from tlsearch.errors import UserError

__all__ = ["keras_file_spec", "build_from_keras_file"]


def _resolve(spec: BackboneSpec, weights: str, base_dir: Path | None) -> tuple[str, str]:
    path = Path(weights).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise UserError(f"backbone {spec.name!r}: the Keras file {str(path)!r} does not exist")
    return str(path), "keras-file:" + file_sha256(path)


def _build(req: BuildRequest):
    assert req.weights is not None, "a .keras backbone is its file"
    return build_from_keras_file(req.weights, req.image_size,
                                 req.options.get("preprocessing") or "none")


def keras_file_spec(entry) -> BackboneSpec:
    """The spec of a ``path:`` entry: its file is its weights, its preprocessing and its block
    pattern (``block_ends``; default: every layer with weights ends a block) come from the entry."""
    return BackboneSpec(
        name=entry.name, builder=_build, preprocessing=entry.preprocessing or "none",
        default_size=224, min_size=8, blocks=entry.block_ends or "", default_weights=str(entry.path),
        family="keras file", description=f"the user's network {entry.path}", weight_names=(),
        resolve=_resolve, entry_options=("preprocessing",),
    )


def build_from_keras_file(path: str, image_size: int, preprocessing: str):
    import keras

    from tlsearch.layers import Preprocess

    try:
        user = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        raise UserError(f"could not load the Keras file {path!r} safely: {e}") from None
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess(preprocessing, name="preprocess")(inp)
    copies: list[tuple] = []

    def fresh(layer):
        copy = layer.__class__.from_config(layer.get_config())
        copies.append((layer, copy))
        return copy

    if isinstance(user, keras.Sequential):
        for layer in user.layers:
            x = fresh(layer)(x)
    else:
        x = user._run_through_graph(x, operation_fn=fresh)
    for layer, copy in copies:
        copy.set_weights(layer.get_weights())
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif len(x.shape) != 2:
        raise UserError(f"the Keras file {path!r} must output a feature map or a vector, "
                        f"got shape {tuple(x.shape)}")
    return keras.Model(inp, x, name="user_backbone")
