"""Shared plumbing: request context, errors, pagination, idempotency, rate limits."""
