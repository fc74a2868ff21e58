"""accounts migrations."""
