"""Benchmarks, each a module run as `python -m bench.<name>`, writing its figures to bench/results/<name>*.json.

report.py holds what every result records besides its figures (machine, commit) and writes it.
Speed targets live here as ratios against a baseline measured in the same run, never as timed assertions in tests.
"""
