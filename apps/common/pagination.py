"""Cursor pagination (stable under inserts; opaque cursors)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, pagination


class CursorPagination(pagination.CursorPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = "-id"

    _position_field: Any = None

    def get_page_size(self, request: Any) -> int:
        """A bad ``page_size`` is a 400 with a field error, not silently the default."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            return pagination._positive_int(raw, strict=True, cutoff=self.max_page_size)
        except ValueError:
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"Must be a whole number from 1 to {self.max_page_size}."]}
            )

    def paginate_queryset(self, queryset: Any, request: Any, view: Any = None) -> list[Any] | None:
        ordering = self.get_ordering(request, queryset, view)
        self._position_field = queryset.model._meta.get_field(ordering[0].lstrip("-"))
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request: Any) -> pagination.Cursor | None:
        """A malformed or tampered cursor is a 400 with a field error (DRF answers 404, or 500 for a
        well-encoded cursor whose position does not fit the ordering field)."""
        invalid = exceptions.ValidationError({self.cursor_query_param: [str(self.invalid_cursor_message)]})
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:
            raise invalid
        if cursor is not None and cursor.position is not None and self._position_field is not None:
            try:
                self._position_field.to_python(cursor.position)
            except DjangoValidationError:
                raise invalid
        return cursor
