"""Closed-loop evaluation and metrics."""
