"""The benchmark suite: ``flashstock bench`` measures flashstock side by side and reports ratios.

Absolute numbers drift on shared machines; ratios of figures measured in the
same run, interleaved round by round, hold. Each measurement lives in its own
module (:mod:`~flashstock.bench.http`, :mod:`~flashstock.bench.ceiling`,
:mod:`~flashstock.bench.postgres`, :mod:`~flashstock.bench.soldout`,
:mod:`~flashstock.bench.ledger`, :mod:`~flashstock.bench.shape`); the runner
starts private services, runs them, and writes a JSON file, a plot and a
Markdown table. docs/benchmarks.md describes every figure.
"""
