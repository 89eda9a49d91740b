"""Benchmarks of fls_kernels: op × provider × shape timings with a verify step, and quality studies.

``python -m benchmarks kernels --device cpu|cuda`` writes a CSV and a markdown table.
"""
