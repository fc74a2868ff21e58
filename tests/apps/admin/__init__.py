"""Compliance admin console tests."""
