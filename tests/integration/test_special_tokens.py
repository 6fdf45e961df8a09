"""End-of-sequence ids, BOS and the prompt/response join as a real model defines them (tests/integration).

Two tokenizers: SmolLM2-135M-Instruct's own (no BOS added; <|im_end|> and <|endoftext|> end a sample)
and a Llama-style one built here (adds <s>, decodes SentencePiece-style: a sequence's leading space is
dropped on decoding). Decoding runs a scripted model, so each test knows exactly what was written.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GenerationConfig, PreTrainedTokenizerFast

from imm.grading.answers import STOP_STRINGS
from imm.models import load_tokenizer
from imm.sampling import complete, written
from imm.sampling.decode import decode, eos_ids
from imm.sft import encode

PROMPT = "### Instruction:\nTom has 14 apples and buys 3 more. How many apples?\n\n### Response: Let's think step by step."
RESPONSE = "\n14 + 3 = 17.\nThe answer is 17"
RUN_ON = "\nSo Tom has 17 apples.\n\n### Response: Let's think step by step.\n14 + 3 = 17."


class Scripted(torch.nn.Module):
    """A causal LM that writes a fixed token script, one token a step, whatever the prompt."""

    def __init__(self, script: list[int], vocab: int, eos: list[int]):
        super().__init__()
        self.script, self.vocab, self.step = script, vocab, 0
        self.generation_config = GenerationConfig(eos_token_id=eos)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=None):
        rows = input_ids.shape[0]
        token = self.script[min(self.step, len(self.script) - 1)]
        self.step += 1
        logits = torch.full((rows, 1, self.vocab), -1e4)
        logits[:, :, token] = 0.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def smol_tok(smollm2):
    return load_tokenizer(str(smollm2))


@pytest.fixture(scope="module")
def llama_tok():
    """A Llama-style tokenizer: <s> before every text, SentencePiece-style pieces ("▁word") whose decoder
    drops the sequence's first space, as Llama's tokenizer.json does."""
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                   pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for text in (PROMPT, RESPONSE + RUN_ON, " The answer is 17", RESPONSE):
        for piece, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(piece, len(vocab))
            vocab.setdefault(piece.lstrip("▁"), len(vocab))
            vocab.setdefault("▁" + piece.lstrip("▁"), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def after_prompt(tok, text: str) -> list[int]:
    """The ids a model writes for ``text`` after PROMPT: those of PROMPT + text past PROMPT's own."""
    p, joined = tok(PROMPT)["input_ids"], tok(PROMPT + text)["input_ids"]
    assert joined[:len(p)] == p
    return joined[len(p):]


def run(tok, script_text: str, eos: list[int], tail: list[int] = (), **kw):
    """Decode PROMPT with a model scripted to write ``script_text`` then ``tail``; (texts, endings)."""
    script = after_prompt(tok, script_text) + list(tail)
    model = Scripted(script + [tok.convert_tokens_to_ids(tok.unk_token or tok.eos_token)] * 40, len(tok), eos)
    stats = {}
    out = complete(model, tok, [PROMPT], max_new_tokens=60, batch_size=1, stats=stats, **kw)
    return out[0][0], stats


def test_every_eos_id_of_the_model_ends_a_sample(smol_tok):
    """<|im_end|> is the tokenizer's EOS; generation_config.json lists <|endoftext|> too: either ends."""
    im_end, endoftext = smol_tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert smol_tok.eos_token_id == im_end
    for last in (im_end, endoftext):
        text, stats = run(smol_tok, "\n14 + 3 = 17.", [im_end, endoftext], tail=[last], at_answer=False)
        assert text == "\n14 + 3 = 17." and stats["endings"] == ["eos"]
    text, stats = run(smol_tok, "\n14 + 3 = 17.", [im_end], tail=[endoftext], at_answer=False)
    assert stats["endings"] == ["length"]  # a model that does not list it: <|endoftext|> is just text


def test_the_prepared_model_lists_both_eos_ids(smollm2, smol_tok):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert eos_ids(model, smol_tok) == set(smol_tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    assert model.config.tie_word_embeddings


@pytest.mark.parametrize("which", ["smol_tok", "llama_tok"])
def test_a_run_on_sample_ends_after_its_answer(which, request):
    tok = request.getfixturevalue(which)
    text, stats = run(tok, RESPONSE + RUN_ON, [tok.eos_token_id])
    assert text == RESPONSE and stats["endings"] == ["stop"]
    assert stats["new_tokens"] < len(after_prompt(tok, RESPONSE + RUN_ON))  # decoding stopped there
    before, stats = run(tok, RESPONSE + RUN_ON, [tok.eos_token_id], at_answer=False)
    assert before == RESPONSE + "\nSo Tom has 17 apples." and stats["endings"] == ["stop"]  # only the format's marker


@pytest.mark.parametrize("which", ["smol_tok", "llama_tok"])
def test_sft_tokenizes_the_prompt_as_sampling_does_and_joins_the_response_as_written(which, request):
    tok = request.getfixturevalue(which)
    sampled_prompt = tok([PROMPT], add_special_tokens=True)["input_ids"][0]
    new = after_prompt(tok, RESPONSE)
    response = written(tok, [sampled_prompt[-1]], [new])[0]
    assert response == RESPONSE  # the leading newline as the model wrote it
    ids, labels = encode(tok, PROMPT, response)
    assert ids[:len(sampled_prompt)] == sampled_prompt  # the same special tokens (Llama: <s>) as sampling
    assert ids[len(sampled_prompt):] == new + [tok.eos_token_id]  # the response tokens the model sampled
    assert labels[:len(sampled_prompt)] == [-100] * len(sampled_prompt) and labels[len(sampled_prompt):] == new + [tok.eos_token_id]
    if which == "llama_tok":
        assert ids[0] == tok.bos_token_id


def test_sentencepiece_leading_space_survives_decoding(llama_tok):
    """Decoded alone, "▁The" reads "The": the text kept for SFT must read " The" after the prompt."""
    new = after_prompt(llama_tok, " The answer is 17")
    assert llama_tok.decode(new).startswith("The")  # the trap
    prompt_last = llama_tok(PROMPT)["input_ids"][-1]
    assert written(llama_tok, [prompt_last], [new]) == [" The answer is 17"]
    alone = llama_tok("\n14", add_special_tokens=False)["input_ids"]
    assert llama_tok.convert_ids_to_tokens(alone)[0].startswith("▁")  # the other trap: a word start before "\n"
    ids, _ = encode(llama_tok, PROMPT, "\n14 + 3 = 17.")
    assert not llama_tok.convert_ids_to_tokens(ids)[len(llama_tok(PROMPT)["input_ids"])].startswith("▁")
