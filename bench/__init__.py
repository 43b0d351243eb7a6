"""Benchmarks of lrsched-fused's CPU optimizer step against its peers (``python -m bench.run``).

Modules: :mod:`bench.workloads` (what is measured: sizes, tensor layouts, data, bytes per parameter),
:mod:`bench.impls` (the implementations: ours and the peers), :mod:`bench.timing` (interleaved timing and
statistics), :mod:`bench.report` (CSV rows, tables, Markdown), :mod:`bench.targets` (issue 5's acceptance
figures) and :mod:`bench.run` (the command line). ``bench/README.md`` documents the columns.
"""
