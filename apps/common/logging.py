"""Logging filter that stamps each record with the current request id."""

import logging

from apps.common.context import get_context


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = get_context().request_id or "-"
        return True
