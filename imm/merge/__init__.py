"""Model merging (paper Eq. 5-7): the rules, their masks, when the loop merges, the streaming merge, its logs.

- :mod:`imm.merge.rules`     the merge rules as pure tensor functions, their registry (MERGE_RULES), MergeConfig
- :mod:`imm.merge.mask`      the seeded DARE mask (which entries of an update survive)
- :mod:`imm.merge.magprune`  DELLA's magnitude-ranked drop chances
- :mod:`imm.merge.schedule`  when the loop merges (merge.schedule) and the steps schedule's pull during SFT
- :mod:`imm.merge.engine`    the streaming merge of safetensors checkpoints the loop runs
- :mod:`imm.merge.stats`     what a merge logs (kept share, norms per tensor group)
"""
