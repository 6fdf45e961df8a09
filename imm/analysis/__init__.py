"""Analyses of a model and its answers beyond pass@k: layers, KL to the base, diversity, forgetting, steps.

- :mod:`imm.analysis.importance`     I_n, the loss change when layer n is skipped (Eq. 3)
- :mod:`imm.analysis.weight_change`  ΔW_n between two checkpoints (Eq. 4)
- :mod:`imm.analysis.cli`            the commands that write their CSVs and PNGs (``python -m imm.analysis``)
- :mod:`imm.analysis.divergence`     KL(π_base‖π) and KL(π‖π_base) per response token, from the logits
- :mod:`imm.analysis.diversity`      how varied the k answers to one question are
- :mod:`imm.analysis.forgetting`     chance-corrected forgetting and Verified pass@1
- :mod:`imm.analysis.reasoning`      per-item records, step classes of right answers, items forgotten or gained
- :mod:`imm.analysis.mechanism`      testbed: per-sample readings of why OOD answers fail
"""
