"""Benchmark scripts for ticketsearch, a package so they run as modules from the repository root:

    python -m benchmarks.imp_lenet_mnist --help
    python benchmarks/run_all.py            # or python -m benchmarks.run_all: the quick ones (make bench)

Each script writes ``benchmarks/results/<benchmark>/<variant>.{json,md}`` through ``benchmarks._writer``
(provenance: commit, command line, versions, device, date, wall time); ``benchmarks/results/README.md``
indexes them. Modules starting with ``_`` are helpers; importing any module here does no work.
"""
