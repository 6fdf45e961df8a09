"""The testbed world's tokenizer: word level, every digit its own token, punctuation separate.

Pieces are cut by one regex (a word with its leading space, a punctuation mark with its leading
space, a single digit, or a lone whitespace character), then byte-level mapped so that spaces
survive inside tokens and ``decode`` reproduces the text exactly ("The answer is 14." comes back
as written, digits unspaced). Special tokens: ``<pad>`` (id 0), ``<eos>`` (id 1), ``<unk>`` (id 2).

Load with :func:`load_tokenizer` (``PreTrainedTokenizerFast.from_pretrained``); do not use
``AutoTokenizer``, which may swap the pre-tokenizer.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)
SPLIT_PATTERN = r" ?[A-Za-z']+| ?[^\sA-Za-z0-9]|[0-9]|\s"
MODEL_MAX_LENGTH = 512  # = the model's max_position_embeddings


def _backend() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def world_texts(per_split: int = 300) -> list[str]:
    """Texts covering the world's whole vocabulary: every family, split and solution style."""
    from imm.data.world.problems import (FULL_STYLES, SHORTCUT_STYLES, TOKENIZER_FAMILIES,
                                         format_prompt, render, sample_problems)
    out = []
    # The shipped families only: token ids follow word counts, so a new family (same words) must
    # not renumber the vocabulary that the shipped model was trained with.
    for fam in TOKENIZER_FAMILIES:
        for split in ("pretrain", "train", "test"):
            for p in sample_problems(fam, split, per_split, 0):
                out += [format_prompt(p.question) + " " + render(p, s)
                        for s in FULL_STYLES + SHORTCUT_STYLES]
    return out


def build_tokenizer(texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Train the word-level vocabulary on the world's texts plus ``texts`` (all digits included)."""
    tok = _backend()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    seed_text = ["0 1 2 3 4 5 6 7 8 9 + - * = . , ? : ' \n"]
    tok.train_from_iterator(seed_text + world_texts() + list(texts), trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer around the backend, special tokens set."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        model_max_length=MODEL_MAX_LENGTH, clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path) -> PreTrainedTokenizerFast:
    """The saved world tokenizer (``tokenizer.save_pretrained(path)``)."""
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    tok.clean_up_tokenization_spaces = False
    return tok
