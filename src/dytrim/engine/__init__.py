"""The training engine: one loop (loop.py) and the pieces it calls."""
