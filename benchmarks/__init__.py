"""Benchmarks of fastalloc-shm against the floor (a minimal hand-written pool) and its peers.

Run with ``python -m benchmarks [--quick] [--out DIR]`` (or ``make bench``); see README.md in
this folder for what is measured and how to read the ratios.
"""
