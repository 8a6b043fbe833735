"""GradientReversal: identity forward, ``-lambda * upstream`` backward, lambda settable without retracing.

The same checks are run on ``Lambda(lambda x: x * -1)``, the layer that is often written for
gradient reversal, to show that they tell the two apart.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from tlsearch.layers import GradientReversal  # noqa: E402

LAMBDAS = [0.0, 0.25, 1.0, 3.0]


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(5, 4)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(5, 4)).astype("float32"))
    return x, upstream


def _forward_and_grad(layer, x, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    return y, tape.gradient(y, x, output_gradients=upstream)


def _behaves_as_reversal(layer, lam: float) -> tuple[bool, bool]:
    """(forward is exactly the input, gradient is -lam * upstream)."""
    x, upstream = _inputs()
    y, g = _forward_and_grad(layer, x, upstream)
    return (bool(np.array_equal(y.numpy(), x.numpy())),
            bool(np.allclose(g.numpy(), -lam * upstream.numpy(), atol=1e-6)))


@pytest.mark.parametrize("lam", LAMBDAS)
def test_forward_is_identity_and_gradient_is_reversed(lam):
    layer = GradientReversal(lam)
    assert _behaves_as_reversal(layer, lam) == (True, True)


def test_set_lambda_changes_the_gradient():
    layer = GradientReversal()
    assert layer.lambda_ == 1.0
    for lam in LAMBDAS:
        layer.set_lambda(lam)
        assert layer.lambda_ == pytest.approx(lam)
        assert _behaves_as_reversal(layer, lam) == (True, True)


def test_negating_lambda_layer_fails_the_same_checks():
    negate = keras.layers.Lambda(lambda x: x * -1)
    for lam in LAMBDAS:
        forward_ok, grad_ok = _behaves_as_reversal(negate, lam)
        assert not forward_ok, "x * -1 changes the forward pass"
        # its gradient is -upstream whatever lambda is: right only by accident at lambda = 1
        assert grad_ok == (lam == 1.0)


def test_lambda_changes_inside_a_compiled_function_without_retracing():
    layer = GradientReversal(0.0)
    x, upstream = _inputs(1)
    traces = []

    @tf.function
    def step_setting_lambda(x, lam):
        traces.append(1)
        layer.set_lambda(lam)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return y, tape.gradient(y, x, output_gradients=upstream)

    for lam in LAMBDAS:
        y, g = step_setting_lambda(x, tf.constant(lam))
        np.testing.assert_array_equal(y.numpy(), x.numpy())
        np.testing.assert_allclose(g.numpy(), -lam * upstream.numpy(), atol=1e-6)
    assert len(traces) == 1

    # set from Python between calls of a function that only reads it
    read_traces = []

    @tf.function
    def step(x):
        read_traces.append(1)
        return _forward_and_grad(layer, x, upstream)[1]

    for lam in LAMBDAS:
        layer.set_lambda(lam)
        np.testing.assert_allclose(step(x).numpy(), -lam * upstream.numpy(), atol=1e-6)
    assert len(read_traces) == 1


def test_lambda_is_not_trainable():
    layer = GradientReversal(0.5)
    assert layer.trainable_weights == []
    assert len(layer.non_trainable_weights) == 1


def test_config_and_save_load_round_trip(tmp_path):
    inp = keras.Input((4,))
    h = keras.layers.Dense(3, name="dense")(inp)
    out = GradientReversal(0.7, name="grl")(h)
    model = keras.Model(inp, out)
    model.get_layer("grl").set_lambda(0.4)

    clone = GradientReversal.from_config(model.get_layer("grl").get_config())
    assert clone.lambda_ == pytest.approx(0.4)

    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    grl = loaded.get_layer("grl")
    assert isinstance(grl, GradientReversal)
    assert grl.lambda_ == pytest.approx(0.4)
    x, _ = _inputs(2)
    np.testing.assert_array_equal(loaded(x[:, :4]).numpy(), model(x[:, :4]).numpy())
    assert _behaves_as_reversal(grl, 0.4) == (True, True)
