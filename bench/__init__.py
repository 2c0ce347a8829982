"""Benchmarks for pinecall-bridge: `make bench` (see bench/run.py)."""
