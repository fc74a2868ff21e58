"""Request parsers: JSON only (plus multipart where a view opts in), malformed JSON is always a 400
(never a 500), and no parsed text may hold a NUL character (see :mod:`apps.common.textinput`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import exceptions, parsers

from apps.common.textinput import reject_nul


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, plus: a body nested thousands of levels deep (``[[[[…``) makes the
    decoder raise RecursionError, which DRF does not catch; answer it as malformed JSON. A string
    or key holding ``\\u0000`` anywhere in the document is a 400 naming its path (``a.b[0]``)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.")
        try:
            reject_nul(data)
        except RecursionError:  # pragma: no cover - the decoder's own depth limit is lower
            raise exceptions.ParseError("JSON parse error - nested too deeply.")
        return data


class MultiPartParser(parsers.MultiPartParser):
    """DRF's multipart parser, plus: form fields and uploaded file names holding a NUL are a 400
    naming the field. The file *contents* are bytes and are not inspected."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        result = super().parse(stream, media_type, parser_context)
        texts: dict[str, Any] = {}
        file_names = [(name, [f.name or "" for f in files]) for name, files in result.files.lists()]
        for name, values in [*result.data.lists(), *file_names]:
            texts[name] = values[0] if len(values) == 1 else values
        try:
            reject_nul(texts)
        except exceptions.ValidationError:
            for files in result.files.lists():
                for f in files[1]:
                    discard = getattr(f, "discard", None)
                    if callable(discard):
                        discard()
            raise
        return result
