"""One script per benchmarked system; each runs in a process of its own (see protocol.py)."""
