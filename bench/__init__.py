"""Benchmarks: programs that measure imm, run from the repository root
(``python -m bench.stages``, ``python -m bench.sweep``, ``python -m bench.gpu_run``,
``python bench/merge_bench.py``); their results are kept beside them."""
