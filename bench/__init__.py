"""Benchmarks of lrsched-fused's CPU optimizer step against its peers (``python -m bench.run``), and the
GPU check (``python -m bench.gpu_check``, ``bash bench/gpu_check.sh``).

Modules: :mod:`bench.workloads` (what is measured: sizes, tensor layouts, data, bytes per parameter),
:mod:`bench.impls` (the implementations: ours and the peers), :mod:`bench.timing` (interleaved timing and
statistics), :mod:`bench.report` (CSV rows, tables, Markdown), :mod:`bench.targets` (issue 5's acceptance
figures) and :mod:`bench.run` (the command line); :mod:`bench.quick` (one case, one table, no CSV),
:mod:`bench.overhead` and :mod:`bench.lamb_bytes` (diagnostics); :mod:`bench.hparams` (the kernels'
hyperparameter rows, for direct backend calls); :mod:`bench.gpu` (the GPU check's modules).
``bench/README.md`` documents the columns.
"""
