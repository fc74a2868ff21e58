"""audit migrations."""
