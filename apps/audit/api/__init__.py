"""Audit REST API."""
