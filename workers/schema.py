"""The dataset schema vocabulary shared by ingest, de-identification and training.

Pure Python (no Django). A schema is what a dataset declares, or what the platform infers and the
owner confirms: its columns with a logical type and a role, the label column and the task.

Logical types map to one Arrow type each; canonical storage (Parquet) uses exactly these:

=========  ====================  ==========================================================
type       Arrow type            meaning
=========  ====================  ==========================================================
integer    int64                 whole numbers
float      float64               real numbers
boolean    bool                  true/false, yes/no, 1/0 (parsed case-insensitively)
date       date32                ISO dates (YYYY-MM-DD), also DD/MM/YYYY when unambiguous
datetime   timestamp[us, UTC]    ISO 8601 date-times; naive values are taken as UTC
category   string                short strings with few distinct values (codes, labels)
string     string                short strings (ids, names, postcodes, e-mails)
text       string                free text (notes); may carry PII inside spans
image      string                path of an image member inside an uploaded zip
=========  ====================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

TYPES: tuple[str, ...] = ("integer", "float", "boolean", "date", "datetime", "category", "string", "text", "image")
ARROW_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us", tz="UTC"),
    "category": pa.string(),
    "string": pa.string(),
    "text": pa.string(),
    "image": pa.string(),
}
NUMERIC_TYPES = frozenset({"integer", "float"})
TEXTUAL_TYPES = frozenset({"category", "string", "text", "image"})

# Roles: a feature the model sees, the label, a direct identifier (never a feature), a
# quasi-identifier (k-anonymity is computed over these), or a column the model ignores.
ROLES: tuple[str, ...] = ("feature", "label", "identifier", "quasi_identifier", "ignore")
TASKS: tuple[str, ...] = (
    "binary_classification",
    "multiclass_classification",
    "regression",
    "text_classification",
    "image_classification",
)


class SchemaError(ValueError):
    """A schema that does not hold together. ``fields`` maps a path to a list of messages."""

    def __init__(self, message: str, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


@dataclass
class Column:
    name: str
    type: str
    role: str = "feature"
    nullable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "role": self.role, "nullable": self.nullable}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Column:
        return cls(
            name=str(data["name"]),
            type=str(data["type"]),
            role=str(data.get("role", "feature")),
            nullable=bool(data.get("nullable", True)),
        )


@dataclass
class DatasetSchema:
    columns: list[Column] = field(default_factory=list)
    label: str | None = None
    task: str | None = None

    # --- lookups -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(c.name == name for c in self.columns)

    @property
    def quasi_identifiers(self) -> list[str]:
        return [c.name for c in self.columns if c.role == "quasi_identifier"]

    @property
    def identifiers(self) -> list[str]:
        return [c.name for c in self.columns if c.role == "identifier"]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, ARROW_TYPES[c.type], nullable=c.nullable) for c in self.columns])

    # --- checks --------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`SchemaError` (with per-field messages) unless the schema is coherent."""
        errors: dict[str, list[str]] = {}
        seen: set[str] = set()
        if not self.columns:
            errors.setdefault("columns", []).append("A schema needs at least one column.")
        for i, c in enumerate(self.columns):
            key = f"columns[{i}]"
            if not c.name or len(c.name) > 200:
                errors.setdefault(f"{key}.name", []).append("Column names are 1 to 200 characters.")
            if c.name in seen:
                errors.setdefault(f"{key}.name", []).append(f"Duplicate column name {c.name!r}.")
            seen.add(c.name)
            if c.type not in TYPES:
                errors.setdefault(f"{key}.type", []).append(f"Unknown type {c.type!r}; one of {', '.join(TYPES)}.")
            if c.role not in ROLES:
                errors.setdefault(f"{key}.role", []).append(f"Unknown role {c.role!r}; one of {', '.join(ROLES)}.")
        if self.label is not None:
            if self.label not in seen:
                errors.setdefault("label", []).append(f"The label column {self.label!r} does not exist.")
            else:
                label_col = self.column(self.label)
                if label_col.role not in ("label", "feature"):
                    errors.setdefault("label", []).append("The label column cannot be an identifier.")
        if self.task is not None:
            if self.task not in TASKS:
                errors.setdefault("task", []).append(f"Unknown task {self.task!r}; one of {', '.join(TASKS)}.")
            elif self.label is None:
                errors.setdefault("task", []).append("A task needs a label column.")
            elif self.label in seen and self.column(self.label).type in TYPES:
                ltype = self.column(self.label).type
                if self.task == "regression" and ltype not in NUMERIC_TYPES:
                    errors.setdefault("task", []).append("Regression needs a numeric label.")
                if self.task == "text_classification" and not any(c.type == "text" for c in self.columns):
                    errors.setdefault("task", []).append("Text classification needs a text column.")
                if self.task == "image_classification" and not any(c.type == "image" for c in self.columns):
                    errors.setdefault("task", []).append("Image classification needs an image column.")
        if errors:
            raise SchemaError("The schema is not valid.", errors)

    # --- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"columns": [c.to_dict() for c in self.columns], "label": self.label, "task": self.task}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSchema:
        try:
            columns = [Column.from_dict(c) for c in data.get("columns", [])]
        except (KeyError, TypeError, AttributeError) as exc:
            raise SchemaError("Each column needs a name and a type.", {"columns": [str(exc)]}) from exc
        schema = cls(columns=columns, label=data.get("label"), task=data.get("task"))
        if schema.label is not None:
            for c in schema.columns:
                if c.name == schema.label and c.role == "feature":
                    c.role = "label"
        return schema
