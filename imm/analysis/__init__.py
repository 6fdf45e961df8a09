"""The paper's layer analyses (``python -m imm.analysis``).

- :mod:`imm.analysis.importance`     I_n, the loss change when layer n is skipped (Eq. 3)
- :mod:`imm.analysis.weight_change`  ΔW_n between two checkpoints (Eq. 4)
- :mod:`imm.analysis.cli`            the commands that write their CSVs and PNGs
"""
