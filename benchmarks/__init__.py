"""Benchmark scripts for ticketsearch, a package so they run as modules from the repository root:

    python -m benchmarks.speed --help
    python benchmarks/run_all.py            # or python -m benchmarks.run_all: the quick ones (make bench-speed)

Only what is not a grid of runs lives here: speed, size, the open_lth and queue timings, and two Optuna
studies that check their best trial against the defaults. An accuracy grid is a suite of
``python -m ticketsearch bench`` (``ticketsearch/bench/suites/``), whose report prints its command.

Each script writes ``benchmarks/results/<benchmark>/<variant>.{json,md}`` through ``benchmarks._writer``
(provenance: commit, command line, versions, device, date, wall time); ``benchmarks/results/README.md``
indexes them. Modules starting with ``_`` are helpers; importing any module here does no work.
"""
