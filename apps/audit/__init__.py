"""Compliance-grade audit log: append-only, hash-chained per tenant, verified and checkpointed."""
