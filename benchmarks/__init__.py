"""Benchmarks for autogen-capacity: overhead, cascade, scale and ledger scenarios.

Run ``python -m benchmarks`` (``--quick`` for a smoke run, ``--out DIR`` for another output directory).
Never timed inside the test suite: ``tests/test_benchmarks.py`` only checks that ``--quick`` still works.
"""
