"""The testbed world: a CPU-sized stand-in for GSM8K and its OOD sets, with a tiny pretrained model.

- :mod:`imm.data.world.problems`  seeded problem families, splits, prompt format (``make_split``).
- :mod:`imm.data.world.tokenizer` word-level tokenizer, digits as single tokens (``build_tokenizer``,
  ``load_tokenizer``).
- :mod:`imm.data.world.pretrain`  ``python -m imm.data.world.pretrain --out imm/assets/testbed --seed 0``.

The shipped base model and tokenizer live in ``imm/assets/testbed`` (see its ``pretrain.json``).
"""
