"""A text backbone cut between its encoder (or decoder) layers.

An encoder layer needs the padding mask as well as the hidden states, so the tensor cached at a
freeze boundary carries the mask as one extra channel; the pipeline's single-tensor cut then works
for text exactly as for images.
"""

from __future__ import annotations

from tlsearch.backbones.base import Backbone

__all__ = ["TextBackbone"]


class TextBackbone(Backbone):
    """A text backbone that can be cut between encoder layers (hidden states + mask)."""

    def _cut_tensors(self, n_unfrozen: int):
        """(hidden states into the lowest unfrozen layer, the padding-mask input)."""
        first = self.blocks[len(self.blocks) - n_unfrozen][0]
        node = self.model.get_layer(first)._inbound_nodes[0]
        mask = self.model.input["padding_mask"]
        return node.arguments.args[0], mask

    def can_cut(self, n_unfrozen: int) -> bool:
        self._check_n(n_unfrozen)
        if n_unfrozen == 0:
            return False
        try:
            self._inner_top(n_unfrozen)
        except Exception:  # a family whose top layers read other stem tensors (DeBERTa)
            return False
        return True

    def _inner_top(self, n_unfrozen: int):
        import keras

        hidden, mask = self._cut_tensors(n_unfrozen)
        return keras.Model([hidden, mask], self.model.output, name=f"{self.name}_top_layers")

    def boundary_output(self, n_unfrozen: int):
        """The hidden states into the lowest unfrozen layer, the padding mask as one more channel."""
        import keras
        from keras import ops

        hidden, mask = self._cut_tensors(n_unfrozen)
        return keras.layers.Concatenate(axis=-1, name="pack_mask")(
            [hidden, ops.expand_dims(ops.cast(mask, hidden.dtype), -1)])

    def split(self, n_unfrozen: int):
        """(bottom, top) with the mask packed as the last channel of the boundary tensor."""
        import keras
        from keras import ops

        if not self.can_cut(n_unfrozen):
            raise ValueError(f"{self.name} cannot be cut below its top {n_unfrozen} blocks")
        hidden, _ = self._cut_tensors(n_unfrozen)
        bottom = keras.Model(self.model.input, self.boundary_output(n_unfrozen),
                             name=f"{self.name}_bottom")
        inner = self._inner_top(n_unfrozen)
        dim = int(hidden.shape[-1])
        inp = keras.Input((None, dim + 1), name="boundary")
        h = keras.layers.Lambda(lambda t: t[..., :dim], name="unpack_hidden")(inp)
        m = keras.layers.Lambda(lambda t: ops.cast(t[..., dim] > 0.5, "int32"),
                                name="unpack_mask")(inp)
        top = keras.Model(inp, inner([h, m]), name=f"{self.name}_top")
        return bottom, top
