"""Request parsers: JSON only, and malformed JSON is always a 400 (never a 500)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import exceptions, parsers


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, plus: a body nested thousands of levels deep (``[[[[…``) makes the
    decoder raise RecursionError, which DRF does not catch; answer it as malformed JSON."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.")
