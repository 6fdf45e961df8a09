"""Grading: is a sample's final answer the gold one?

- :mod:`imm.grading.answers`    stop strings, option letters, reading a sample's final answer
- :mod:`imm.grading.checks`     comparing it with the gold (numbers, LaTeX, option letters), in workers
- :mod:`imm.grading.filtering`  keeping the correct samples of a sampling stage
- :mod:`imm.grading.passk`      the unbiased pass@k estimator
"""
