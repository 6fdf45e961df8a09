"""Model merging (paper Eq. 5-7).

- :mod:`imm.merge.rules`   the merge rules as pure tensor functions, one registry, and MergeConfig
- :mod:`imm.merge.engine`  the streaming merge of safetensors checkpoints the loop runs
- :mod:`imm.merge.stats`   what a merge logs (kept share, norms per tensor group)
"""
