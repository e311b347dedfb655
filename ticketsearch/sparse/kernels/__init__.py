"""Kernel implementations behind the backend switch. ``reference`` is inline in layers.py (the oracle)."""
