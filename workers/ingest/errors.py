"""The one exception ingest raises for bad input, with a machine-readable code.

Uploads are medical and financial records, so an error must be safe to show to the uploader, to log
and to store: ``message`` and ``details`` carry line numbers, column names, expected types and
reasons only -- never a cell value from the file (it may be PII). Raisers are responsible for that;
nothing here copies file content, and Arrow's own exception texts (which quote rows) are never
forwarded.
"""

from __future__ import annotations

from typing import Any

CODES: frozenset[str] = frozenset(
    {
        "empty_file",
        "wrong_encoding",
        "binary_content",
        "unsupported_format",
        "ragged_rows",
        "no_header",
        "duplicate_columns",
        "unknown_label_column",
        "schema_mismatch",
        "row_errors",
        "parquet_unreadable",
        "jsonl_invalid",
        "zip_bomb",
        "zip_path_traversal",
        "zip_symlink",
        "zip_too_many_members",
        "zip_nested_archive",
        "zip_invalid",
        "zip_no_labels",
        "zip_bad_image",
        "too_large",
        "nul_character",
    }
)


class IngestError(Exception):
    """Rejected input. ``code`` is one of :data:`CODES`; ``details`` is JSON-safe."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        if code not in CODES:  # a typo here would silently break the API's error mapping
            raise ValueError(f"unknown ingest error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form an API or a job record stores."""
        return {"code": self.code, "message": self.message, "details": self.details}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
