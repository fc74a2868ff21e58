"""Turn de-identified Arrow data (or an image zip) plus a :class:`DatasetSchema` into tensors.

Three paths, one result type (:class:`Prepared`):

* **tabular** (:func:`prepare_tabular`): features are the columns whose role is ``feature`` or
  ``quasi_identifier`` (generalised QIs are still signal), never identifiers, ignored columns or
  the label. Numbers, dates (days since 1970-01-01) and date-times are standardised with mean/std
  of the *train split only*, so nothing about the validation rows leaks into the inputs; booleans
  become 0/1; ``category``/``string`` columns are one-hot over the top-K train values plus an
  "other" slot. A null becomes 0 and, when the train split had nulls in that column, a
  ``<col>__missing`` indicator carries the fact. ``text`` and ``image`` columns are left to
  their own paths.
* **text** (:func:`prepare_text`): a deterministic tokenizer (``\\w+`` words of the NFKC-normalised,
  case-folded text) and a
  vocabulary from the train split (``min_freq``, ``max_vocab``; id 0 = PAD, 1 = OOV) — unless the
  spec's model declares its own tokenizer (a pretrained model such as ``minilm`` must read its own
  vocabulary): then that tokenizer encodes, and the encoders name it and its vocabulary's SHA-256
  instead of storing a vocabulary.
* **image** (:func:`prepare_images`): a zip file object whose members are decoded with Pillow to
  fixed-size grayscale or RGB tensors, labels from ``labels.csv`` (``file,label``) or folders.

Labels: classes are sorted and kept in :attr:`Prepared.classes` for decoding; regression targets
are standardised with train statistics (kept in the encoders) and de-standardised for metrics.
Rows whose label is null are dropped: they cannot be learnt from or scored.

Everything a model needs at inference (encoders, vocabulary, classes) is JSON in
:attr:`Prepared.encoders`; :func:`encode_tabular`, :func:`encode_text` and :func:`encode_images`
re-apply it to new data.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import torch

from workers.schema import DatasetSchema
from workers.training.models import text_tokenizer
from workers.training.spec import SpecError, TrainSpec

ArrowData: TypeAlias = pa.Table | Iterable[pa.RecordBatch]
FEATURE_ROLES = frozenset({"feature", "quasi_identifier"})
CLASSIFICATION_TASKS = frozenset(
    {"binary_classification", "multiclass_classification", "text_classification", "image_classification"}
)
PAD_ID = 0
OOV_ID = 1
TOKEN_RE = re.compile(r"\w+", re.UNICODE)
# How the word tokenizer folds text before splitting it, recorded in a word vocabulary's encoders:
# NFKC (one code point for "é" whether a site's export composed it or not; full-width and ligature
# forms become their plain letters) then case folding ("Straße" and "STRASSE" are one word).
# Encoders without the key were built with ``str.lower()`` alone and keep encoding that way.
WORD_NORMALIZATION = "nfkc_casefold"
LEGACY_WORD_NORMALIZATION = "lower"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
OTHER = "<other>"
_US_PER_DAY = 86_400_000_000.0


class DataError(ValueError):
    """The data cannot be turned into a training set (no label, one class, empty split...)."""


@dataclass
class Prepared:
    """Tensors for one run plus everything needed to re-apply the encoding.

    ``x_*`` are float32 ``(n, d)`` (tabular), int64 ``(n, max_len)`` (text) or float32
    ``(n, c, h, w)`` (image); ``y_*`` are int64 class ids or float32 standardised targets.
    ``train_index``/``val_index`` are row numbers in the input after null labels were dropped.
    """

    kind: str  # "tabular" | "text" | "image"
    problem: str  # "classification" | "regression"
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    feature_names: list[str]
    classes: list[Any] | None
    encoders: dict[str, Any]
    input_info: dict[str, Any]
    train_index: list[int] = field(default_factory=list)
    val_index: list[int] = field(default_factory=list)

    @property
    def is_classification(self) -> bool:
        return self.problem == "classification"

    @property
    def n_outputs(self) -> int:
        return int(self.input_info["n_outputs"])

    def decode(self, ids: Sequence[int] | torch.Tensor) -> list[Any]:
        """Class ids back to the original label values."""
        if self.classes is None:
            raise DataError("A regression target has no classes.")
        return [self.classes[int(i)] for i in ids]

    def unscale(self, y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Regression: standardised predictions back to the label's units."""
        lab = self.encoders["label"]
        return y * float(lab["std"]) + float(lab["mean"])


# --- helpers -----------------------------------------------------------------------------------
def to_table(data: ArrowData) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    batches: list[pa.RecordBatch] = list(data)
    if not batches:
        raise DataError("No data: the iterable of record batches was empty.")
    return pa.Table.from_batches(batches)


def problem_of(schema: DatasetSchema, label_type: str) -> str:
    if schema.task == "regression":
        return "regression"
    if schema.task in CLASSIFICATION_TASKS:
        return "classification"
    return "regression" if label_type == "float" else "classification"


def split_indices(
    n: int, val_fraction: float, seed: int, y: npt.NDArray[np.int64] | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded train/val split; stratified by class when ``y`` is given.

    Each class with at least two rows contributes ``round(n_c * val_fraction)`` rows (at least one,
    at most ``n_c - 1``) to validation, so every class is seen in both splits when it can be.
    """
    rng = np.random.default_rng(seed)
    if y is None:
        perm = rng.permutation(n)
        n_val = min(max(round(n * val_fraction), 1), n - 1)
        return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)
    train: list[npt.NDArray[np.int64]] = []
    val: list[npt.NDArray[np.int64]] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = 0 if len(idx) < 2 else min(max(round(len(idx) * val_fraction), 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64)


def _labels(values: list[Any], problem: str) -> tuple[npt.NDArray[Any], dict[str, Any], list[Any] | None]:
    if problem == "classification":
        classes = sorted(set(values))
        if len(classes) < 2:
            raise DataError("Classification needs at least two classes in the label.")
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[v] for v in values], dtype=np.int64)
        return y, {"kind": "classes", "classes": classes}, classes
    arr = np.asarray(values, dtype=np.float64)
    return arr, {"kind": "regression"}, None


def _label_column(table: pa.Table, schema: DatasetSchema) -> tuple[str, str]:
    if schema.label is None:
        raise DataError("The schema has no label column.")
    if schema.label not in table.column_names:
        raise DataError(f"The label column {schema.label!r} is not in the data.")
    return schema.label, schema.column(schema.label).type


def _split_rows(
    table: pa.Table, schema: DatasetSchema, spec: TrainSpec
) -> tuple[pa.Table, npt.NDArray[Any], dict[str, Any], list[Any] | None, str, Any, Any]:
    """Drop null labels, encode labels, split; return everything the three paths share."""
    label, ltype = _label_column(table, schema)
    table = table.filter(pc.is_valid(table.column(label)))
    if table.num_rows < 2:
        raise DataError("At least two labelled rows are needed.")
    problem = problem_of(schema, ltype)
    y, label_enc, classes = _labels(table.column(label).to_pylist(), problem)
    train_idx, val_idx = split_indices(
        table.num_rows, spec.val_fraction, spec.seed, y if problem == "classification" else None
    )
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError("Too few rows for a train/validation split.")
    if problem == "regression":
        mean = float(np.mean(y[train_idx]))
        std = float(np.std(y[train_idx])) or 1.0
        label_enc.update(mean=mean, std=std)
        y = ((y - mean) / std).astype(np.float32)
    return table, y, label_enc, classes, problem, train_idx, val_idx


# --- tabular -------------------------------------------------------------------------------------
def _numeric(col: pa.ChunkedArray, ltype: str) -> npt.NDArray[np.float64]:
    """A numeric view with NaN for nulls: dates as days since epoch, date-times as fractional days."""
    if ltype == "date":
        col = pc.cast(col, pa.int32())
    elif ltype == "datetime":
        col = pc.cast(pc.cast(col, pa.timestamp("us")), pa.int64())
    arr = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    if ltype == "datetime":
        arr = arr / _US_PER_DAY
    return arr


def fit_tabular(
    table: pa.Table, schema: DatasetSchema, train_idx: npt.NDArray[np.int64], max_categories: int
) -> dict[str, Any]:
    """Learn per-column encoders from the train rows only."""
    cols: list[dict[str, Any]] = []
    take = pa.array(train_idx)
    for c in schema.columns:
        if c.role not in FEATURE_ROLES or c.name == schema.label or c.type in ("text", "image"):
            continue
        if c.name not in table.column_names:
            raise DataError(f"The feature column {c.name!r} is not in the data.")
        col = table.column(c.name).take(take)
        if c.type in ("integer", "float", "date", "datetime", "boolean"):
            arr = _numeric(col, c.type)
            present = arr[~np.isnan(arr)]
            missing = bool(len(present) < len(arr))
            if c.type == "boolean":
                cols.append({"name": c.name, "type": c.type, "encoding": "boolean", "missing": missing})
                continue
            mean = float(present.mean()) if len(present) else 0.0
            std = float(present.std()) if len(present) else 1.0
            cols.append(
                {
                    "name": c.name,
                    "type": c.type,
                    "encoding": "standard",
                    "mean": mean,
                    "std": std or 1.0,
                    "missing": missing,
                }
            )
        else:  # category / string
            values = col.to_pylist()
            counts = Counter(str(v) for v in values if v is not None)
            top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]
            cols.append(
                {
                    "name": c.name,
                    "type": c.type,
                    "encoding": "onehot",
                    "values": [v for v, _ in top],
                    "missing": any(v is None for v in values),
                }
            )
    if not cols:
        raise DataError("No feature columns: mark at least one column as a feature.")
    return {"kind": "tabular", "columns": cols}


def tabular_feature_names(encoders: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for c in encoders["columns"]:
        if c["encoding"] == "onehot":
            names += [f"{c['name']}={v}" for v in c["values"]] + [f"{c['name']}={OTHER}"]
        else:
            names.append(c["name"])
        if c["missing"]:
            names.append(f"{c['name']}__missing")
    return names


def encode_tabular(data: ArrowData, encoders: dict[str, Any]) -> torch.Tensor:
    """Apply fitted tabular encoders to any table with the same columns (training or inference)."""
    table = to_table(data)
    n = table.num_rows
    parts: list[npt.NDArray[np.float32]] = []
    for c in encoders["columns"]:
        if c["name"] not in table.column_names:
            raise DataError(f"The feature column {c['name']!r} is not in the data.")
        col = table.column(c["name"])
        if c["encoding"] in ("standard", "boolean"):
            arr = _numeric(col, c["type"])
            nan = np.isnan(arr)
            if c["encoding"] == "standard":
                arr = (arr - c["mean"]) / c["std"]
            arr[nan] = 0.0
            parts.append(arr.astype(np.float32)[:, None])
        else:
            values = col.to_pylist()
            slot = {v: i for i, v in enumerate(c["values"])}
            onehot = np.zeros((n, len(c["values"]) + 1), dtype=np.float32)
            nan = np.zeros(n, dtype=bool)
            for r, v in enumerate(values):
                if v is None:
                    nan[r] = True
                else:
                    onehot[r, slot.get(str(v), len(c["values"]))] = 1.0
            parts.append(onehot)
        if c["missing"]:
            parts.append(nan.astype(np.float32)[:, None])
    x = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x))


def _finish(
    kind: str,
    problem: str,
    x: torch.Tensor,
    y: npt.NDArray[Any],
    train_idx: npt.NDArray[np.int64],
    val_idx: npt.NDArray[np.int64],
    feature_names: list[str],
    classes: list[Any] | None,
    encoders: dict[str, Any],
    info: dict[str, Any],
) -> Prepared:
    yt = torch.from_numpy(y.astype(np.int64 if problem == "classification" else np.float32))
    ti, vi = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    info["n_outputs"] = len(classes) if classes is not None else 1
    info["n_train"], info["n_val"] = len(train_idx), len(val_idx)
    return Prepared(
        kind=kind,
        problem=problem,
        x_train=x[ti].contiguous(),
        y_train=yt[ti].contiguous(),
        x_val=x[vi].contiguous(),
        y_val=yt[vi].contiguous(),
        feature_names=feature_names,
        classes=classes,
        encoders=encoders,
        input_info=info,
        train_index=train_idx.tolist(),
        val_index=val_idx.tolist(),
    )


def prepare_tabular(data: ArrowData, schema: DatasetSchema, spec: TrainSpec) -> Prepared:
    table, y, label_enc, classes, problem, train_idx, val_idx = _split_rows(to_table(data), schema, spec)
    encoders = fit_tabular(table, schema, train_idx, spec.data.max_categories)
    encoders["label"] = label_enc
    x = encode_tabular(table, encoders)
    names = tabular_feature_names(encoders)
    return _finish("tabular", problem, x, y, train_idx, val_idx, names, classes, encoders, {"n_features": x.shape[1]})


def label_sort_key(v: Any) -> tuple[str, Any]:
    """A total order over label values of mixed JSON types (numbers numerically, strings as text)."""
    return (type(v).__name__, v)


def site_split(values: list[Any], problem: str, spec: TrainSpec) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A federation site's seeded train/validation split, stratified by its *own* label values.

    Round 0's statistics and every training round split with this one function, so the shared
    encoders come from exactly the rows the site trains on and never from its validation rows.
    """
    if problem == "classification":
        index = {v: i for i, v in enumerate(sorted(set(values), key=label_sort_key))}
        y = np.array([index[v] for v in values], dtype=np.int64)
        return split_indices(len(values), spec.val_fraction, spec.seed, y)
    return split_indices(len(values), spec.val_fraction, spec.seed, None)


def prepare_with_encoders(
    data: ArrowData, schema: DatasetSchema, spec: TrainSpec, encoders: dict[str, Any]
) -> Prepared:
    """Tabular or text tensors encoded with *given* encoders (a federation's, merged in round 0).

    Unlike :func:`prepare_tabular` and :func:`prepare_text` nothing is fitted here: the label
    classes, means, category and word vocabularies are the federation's, so a site that holds one
    class only still gets the shared output layer, and every site's token ids mean the same words.
    A label value the encoders do not know is a :class:`DataError`.
    """
    kind = encoders.get("kind")
    if kind not in ("tabular", "text") or "label" not in encoders:
        raise DataError("Federated training needs tabular or text encoders with a label encoder.")
    table = to_table(data)
    label, _ltype = _label_column(table, schema)
    table = table.filter(pc.is_valid(table.column(label)))
    if table.num_rows < 2:
        raise DataError("At least two labelled rows are needed.")
    label_values = table.column(label).to_pylist()
    lab = encoders["label"]
    classes: list[Any] | None
    if lab["kind"] == "classes":
        problem, classes = "classification", list(lab["classes"])
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({v for v in label_values if v not in index}, key=label_sort_key)
        if unknown:
            raise DataError(
                f"{len(unknown)} label value(s) are not among the federation's classes: "
                + ", ".join(repr(v) for v in unknown[:5])
            )
        y: npt.NDArray[Any] = np.array([index[v] for v in label_values], dtype=np.int64)
    else:
        problem, classes = "regression", None
        raw = np.asarray(label_values, dtype=np.float64)
        y = ((raw - float(lab["mean"])) / float(lab["std"])).astype(np.float32)
    train_idx, val_idx = site_split(label_values, problem, spec)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError("Too few rows for a train/validation split.")
    if kind == "text":
        columns = list(encoders["columns"])
        absent = [c for c in columns if c not in table.column_names]
        if absent:
            raise DataError(f"The text column {absent[0]!r} is not in the data.")
        x = encode_text(_text_values(table, columns), encoders)
        info = text_input_info(encoders)
        return _finish("text", problem, x, y, train_idx, val_idx, columns, classes, encoders, info)
    x = encode_tabular(table, encoders)
    names = tabular_feature_names(encoders)
    return _finish("tabular", problem, x, y, train_idx, val_idx, names, classes, encoders, {"n_features": x.shape[1]})


# --- text ------------------------------------------------------------------------------------------
def text_input_info(encoders: dict[str, Any]) -> dict[str, Any]:
    """What a text model is built from (``vocab_size``, ``pad_id``, ``max_len``; ``tokenizer`` for a
    model's own), as :func:`prepare_text` reports it, from the encoders alone."""
    max_len = int(encoders["max_len"])
    if "tokenizer" in encoders:
        tok = text_tokenizer(str(encoders["tokenizer"]))
        if tok is None:
            raise DataError(f"No model declares the tokenizer {encoders['tokenizer']!r}.")
        return {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "max_len": max_len, "tokenizer": tok.name}
    return {"vocab_size": len(encoders["vocab"]), "pad_id": int(encoders.get("pad_id", PAD_ID)), "max_len": max_len}


def tokenize(text: str, normalization: str = WORD_NORMALIZATION) -> list[str]:
    """Words (``\\w+``) of the folded text (see :data:`WORD_NORMALIZATION`); deterministic and
    locale-free so inference matches training and every site splits its notes the same way."""
    if normalization == WORD_NORMALIZATION:
        text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    elif normalization == LEGACY_WORD_NORMALIZATION:
        text = text.lower()
    else:
        raise DataError(f"Unknown word normalization {normalization!r}.")
    return TOKEN_RE.findall(text)


def build_vocab(texts: Iterable[str], min_freq: int, max_size: int) -> list[str]:
    """Id order: PAD, OOV, then tokens by descending train frequency (ties alphabetical)."""
    counts = Counter(tok for t in texts for tok in tokenize(t))
    kept = sorted(((t, n) for t, n in counts.items() if n >= min_freq), key=lambda kv: (-kv[1], kv[0]))
    return ["<pad>", "<oov>"] + [t for t, _ in kept[: max(max_size - 2, 0)]]


def encode_text(texts: Sequence[str | None], encoders: dict[str, Any]) -> torch.Tensor:
    """Token ids ``(n, max_len)``, truncated and right-padded with PAD (the model's tokenizer when it has one)."""
    if "tokenizer" in encoders:
        tok = text_tokenizer(str(encoders["tokenizer"]))
        if tok is None:
            raise DataError(f"No model declares the tokenizer {encoders['tokenizer']!r}.")
        if tok.fingerprint != encoders.get("tokenizer_sha256"):
            raise DataError(f"The {tok.name} vocabulary here is not the one the model was trained with.")
        return tok.encode(texts, int(encoders["max_len"]))
    index = {t: i for i, t in enumerate(encoders["vocab"])}
    max_len = int(encoders["max_len"])
    normalization = str(encoders.get("normalization", LEGACY_WORD_NORMALIZATION))
    out = torch.full((len(texts), max_len), PAD_ID, dtype=torch.int64)
    for r, text in enumerate(texts):
        ids = [index.get(tok, OOV_ID) for tok in tokenize(text or "", normalization)][:max_len]
        if ids:
            out[r, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out


def _text_values(table: pa.Table, columns: list[str]) -> list[str]:
    cols = [table.column(c).to_pylist() for c in columns]
    return [" \n ".join(v for v in row if v) for row in zip(*cols, strict=True)]


def prepare_text(data: ArrowData, schema: DatasetSchema, spec: TrainSpec) -> Prepared:
    """All ``text`` feature columns, joined, become one token sequence per row."""
    table, y, label_enc, classes, problem, train_idx, val_idx = _split_rows(to_table(data), schema, spec)
    columns = [
        c.name for c in schema.columns if c.type == "text" and c.role in FEATURE_ROLES and c.name != schema.label
    ]
    if not columns:
        raise DataError("Text training needs at least one text feature column.")
    texts = _text_values(table, columns)
    tok = text_tokenizer(spec.model.name)
    if tok is not None:
        max_len = spec.data.text_max_len
        if not 3 <= max_len <= tok.max_len:
            raise SpecError(
                "The text is too long for the model.", {"data.text_max_len": [f"At most {tok.max_len} tokens."]}
            )
        tok_encoders: dict[str, Any] = {
            "kind": "text",
            "columns": columns,
            "tokenizer": tok.name,
            "tokenizer_sha256": tok.fingerprint,
            "pad_id": tok.pad_id,
            "max_len": max_len,
            "label": label_enc,
        }
        x = tok.encode(texts, max_len)
        tok_info = {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "max_len": max_len, "tokenizer": tok.name}
        return _finish("text", problem, x, y, train_idx, val_idx, columns, classes, tok_encoders, tok_info)
    vocab = build_vocab((texts[i] for i in train_idx), spec.data.text_min_freq, spec.data.text_max_vocab)
    encoders = {
        "kind": "text",
        "columns": columns,
        "vocab": vocab,
        "normalization": WORD_NORMALIZATION,
        "pad_id": PAD_ID,
        "oov_id": OOV_ID,
        "max_len": spec.data.text_max_len,
        "label": label_enc,
    }
    x = encode_text(texts, encoders)
    info = {"vocab_size": len(vocab), "pad_id": PAD_ID, "max_len": spec.data.text_max_len}
    return _finish("text", problem, x, y, train_idx, val_idx, columns, classes, encoders, info)


# --- images ----------------------------------------------------------------------------------------
def _decode_image(data: bytes, size: int, mode: str) -> npt.NDArray[np.float32]:
    from PIL import Image  # local: only image runs need Pillow

    with Image.open(io.BytesIO(data)) as img:
        small = img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(small, dtype=np.float32) / 255.0
    return arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_image_zip(
    zip_file: BinaryIO, *, max_members: int = 200_000, max_member_bytes: int = 32 << 20
) -> list[tuple[str, str, bytes]]:
    """``(name, label, bytes)`` for each image member, sorted by name.

    The upload was already checked by ``workers.ingest.archive``; the caps here only bound memory
    if this is handed something else. Labels come from ``labels.csv`` at the root when present,
    else from the image's parent folder.
    """
    with zipfile.ZipFile(zip_file) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > max_members:
            raise DataError(f"The zip has more than {max_members} members.")
        names = {i.filename for i in infos}
        labels: dict[str, str] | None = None
        if "labels.csv" in names:
            text = zf.read("labels.csv").decode("utf-8-sig")
            reader = csv.DictReader(io.StringIO(text))
            if reader.fieldnames is None or not {"file", "label"} <= set(reader.fieldnames):
                raise DataError("labels.csv needs the columns file,label.")
            labels = {row["file"].strip(): row["label"].strip() for row in reader}
        out: list[tuple[str, str, bytes]] = []
        for info in sorted(infos, key=lambda i: i.filename):
            name = info.filename
            base = posixpath.basename(name)
            if name.startswith("__MACOSX/") or base.startswith(".") or not base.lower().endswith(IMAGE_EXTENSIONS):
                continue
            if labels is not None:
                label = labels.get(name)
                if label is None:
                    continue  # an image without a label row is not part of the dataset
            else:
                parent = posixpath.basename(posixpath.dirname(name))
                if not parent:
                    raise DataError(f"{name!r} is not in a label folder and there is no labels.csv.")
                label = parent
            with zf.open(info) as fh:
                blob = fh.read(max_member_bytes + 1)
            if len(blob) > max_member_bytes:
                raise DataError(f"{name!r} is larger than {max_member_bytes} bytes.")
            out.append((name, label, blob))
    if not out:
        raise DataError("The zip holds no labelled images.")
    return out


def encode_images(images: Sequence[bytes], encoders: dict[str, Any]) -> torch.Tensor:
    """Decode, resize and normalise images with the per-channel train mean/std."""
    size, mode = int(encoders["image_size"]), str(encoders["mode"])
    arr = np.stack([_decode_image(b, size, mode) for b in images]) if images else np.zeros((0, len(mode), size, size))
    mean = np.asarray(encoders["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(encoders["std"], dtype=np.float32)[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray(((arr - mean) / std).astype(np.float32)))


def prepare_images(zip_file: BinaryIO, spec: TrainSpec) -> Prepared:
    """Image classification from a zip; pixels scaled to [0, 1] then standardised per channel (train stats)."""
    members = read_image_zip(zip_file)
    size, mode = spec.data.image_size, spec.data.image_mode
    raw = np.stack([_decode_image(b, size, mode) for _, _, b in members])
    y, label_enc, classes = _labels([lab for _, lab, _ in members], "classification")
    train_idx, val_idx = split_indices(len(members), spec.val_fraction, spec.seed, y)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError("Too few images for a train/validation split.")
    train_px = raw[train_idx]
    mean = train_px.mean(axis=(0, 2, 3)).astype(np.float64)
    std = train_px.std(axis=(0, 2, 3)).astype(np.float64)
    std[std == 0] = 1.0
    encoders = {
        "kind": "image",
        "image_size": size,
        "mode": mode,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "label": label_enc,
    }
    x = torch.from_numpy(((raw - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32))
    info = {"channels": len(mode), "image_size": size}
    # Member names are not features (and may carry names): images have no per-feature names.
    return _finish("image", "classification", x, y, train_idx, val_idx, [], classes, encoders, info)


def prepare(data: ArrowData, schema: DatasetSchema, spec: TrainSpec) -> Prepared:
    """Tabular or text, chosen by the schema's task (images come as a zip: :func:`prepare_images`)."""
    if schema.task == "image_classification":
        raise SpecError("Image datasets are prepared from their zip.", {"task": ["Use prepare_images()."]})
    if schema.task == "text_classification":
        return prepare_text(data, schema, spec)
    return prepare_tabular(data, schema, spec)
