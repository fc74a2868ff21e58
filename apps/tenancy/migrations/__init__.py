"""tenancy migrations."""
