"""Tenancy REST API."""
