"""Evaluation: ``benchmarks`` (registry and loaders of the paper's six sets, the verl eval
sets and any file by field mapping), ``metrics`` (avg@k, pass@k, maj@k, bootstrap CIs) and
``callback`` (validation during training).

Submodules are imported explicitly (``from sfpo_lab.eval.metrics import avg_at_k``) so that
using the metrics does not pull in the data loaders and their dependencies.
"""
