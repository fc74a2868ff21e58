"""Federated learning: the federation spec, update validation and aggregation strategies (no Django)."""
