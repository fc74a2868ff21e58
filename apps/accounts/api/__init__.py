"""Accounts REST API."""
