"""Benchmarks and the GPU smoke: programs that measure imm, run from the repository root
(``python -m bench.stages``, ``python -m bench.sweep``, ``python -m bench.gpu_smoke``,
``python bench/merge_bench.py``); their results are kept beside them."""
