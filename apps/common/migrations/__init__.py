"""common migrations."""
