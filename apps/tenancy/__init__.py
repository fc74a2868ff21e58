"""Tenants, memberships and roles; fail-closed tenant scoping in the app and in PostgreSQL RLS."""
