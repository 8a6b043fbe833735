"""A user's own saved Keras model as a backbone (an in-house pretrained network).

The file is loaded with ``safe_mode=True``: a ``.keras`` file that carries Python code (a ``Lambda``
layer's bytecode) is refused rather than executed. The network is re-wired onto a fresh input with
its own layers, so that it is one flat graph that can be frozen and unfrozen block by block.
"""

from __future__ import annotations

from tlsearch.errors import UserError


def build_from_keras_file(path: str, image_size: int, preprocessing: str, block_ends: str | None):
    import keras

    from tlsearch.layers import Preprocess

    try:
        user = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        raise UserError(f"could not load the Keras file {path!r} safely: {e}") from None
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = Preprocess(preprocessing, name="preprocess")(inp)
    if isinstance(user, keras.Sequential):
        for layer in user.layers:
            x = layer(x)
    else:
        x = keras.models.clone_model(user, input_tensors=x, clone_function=lambda layer: layer).output
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif len(x.shape) != 2:
        raise UserError(f"the Keras file {path!r} must output a feature map or a vector, "
                        f"got shape {tuple(x.shape)}")
    return keras.Model(inp, x, name="user_backbone"), block_ends
