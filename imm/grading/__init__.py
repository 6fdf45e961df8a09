"""Grading: reading a sample's final answer, checking it against the gold one, keeping correct samples, pass@k.

- :mod:`imm.grading.answers`    stop strings, option letters, reading a sample's final answer
- :mod:`imm.grading.checks`     comparing it with the gold (numbers, LaTeX, option letters), with counts
- :mod:`imm.grading.pool`       the long-lived, time-limited worker processes for LaTeX and choice checks
- :mod:`imm.grading.filtering`  keeping the correct samples of a sampling stage
- :mod:`imm.grading.passk`      the unbiased pass@k estimator

Data (prompts, benchmark loaders) imports from here; nothing here imports from ``imm.data``.
"""
