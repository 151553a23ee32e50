"""Evaluation commands run against a live stack (not part of the fresh-clone test suite)."""
