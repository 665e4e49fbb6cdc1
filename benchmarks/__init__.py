"""Benchmark harness: side-by-side comparison, speed and budget study."""
