"""Sampling chain-of-thought solutions (the ``hf`` backend: transformers models, our decoding loop).

``synthesize`` draws k samples per question spread over the configured temperatures (sample i
uses temperatures[i % len]), all k in one decoding call per batch; ``complete`` is the batched
primitive that evaluation reuses. Prompts are sorted by length and left-padded; finished
sequences leave the batch (imm/sampling/decode.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from imm.grading.answers import STOP_STRINGS, cut_sample
from imm.models import DTYPES
from imm.sampling import slots as slots_decoder
from imm.sampling.batching import decode_slots
from imm.sampling.decode import Prefix, decode, eos_ids, shared_prefix
from imm.sampling.engine import EngineConfig

log = logging.getLogger(__name__)
ENGINE_KEYS = ("backend", "compile", "tensor_parallel_size", "batch_size")  # generate.<x>: the former names of engine.<x>

MAX_ROWS = 512  # sequences decoded at once on CPU; more gives no speed, only memory
WIDTH_STEP = 64  # compile=true: prompts are left-padded to a multiple of this many tokens


@dataclass
class GenerateConfig:
    k: int = 4  # samples per training question (paper: 3 for GSM8K, 6 for MATH)
    temperatures: List[float] = field(default_factory=lambda: [0.2, 0.4, 0.6])  # spread of the k samples
    top_p: float = 1.0  # nucleus sampling mass, (0, 1]
    max_new_tokens: int = 96  # longest sample, in tokens
    seed: int = 0  # sampling seed (combined with the iteration)
    stop_at_answer: bool = True  # end a sample after its first final-answer statement (false: only EOS / stop strings)
    # Former names of engine.backend / engine.compile / engine.tensor_parallel_size / engine.batch_size,
    # still read (Config moves them to engine); null = not given.
    backend: Optional[str] = None
    compile: Optional[bool] = None
    tensor_parallel_size: Optional[int] = None
    batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"generate.k={self.k} must be >= 1")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"generate.temperatures={self.temperatures} must be a non-empty list of values >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generate.top_p={self.top_p} must lie in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("generate.max_new_tokens must be >= 1")

    def engine_overrides(self) -> dict:
        """The engine settings given under their former generate.* names."""
        return {k: getattr(self, k) for k in ENGINE_KEYS if getattr(self, k) is not None}


KV_SHARE = 0.25  # share of free memory the KV cache of one decoding call may take
GPU_MAX_ROWS = 4096


def kv_bytes_per_token(config, itemsize: int) -> int:
    """Bytes of KV cache one token of one sequence takes (keys and values, every layer)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * itemsize


def batch_for_memory(config, itemsize: int, n: int, max_tokens: int, free: int, cap: int) -> int:
    """Prompts per call so that n samples of ``max_tokens`` tokens each fit KV_SHARE of ``free`` bytes."""
    rows = max(1, min(cap, int(free * KV_SHARE // (kv_bytes_per_token(config, itemsize) * max_tokens))))
    return max(1, rows // n)


def auto_batch_size(model, n: int, max_tokens: int) -> int:
    """Prompts per call for ``model``; ``max_tokens``: the longest prompt plus the new tokens, in tokens."""
    if model.device.type == "cuda":
        free, cap = torch.cuda.mem_get_info(model.device)[0], GPU_MAX_ROWS
    else:
        import psutil

        free, cap = psutil.virtual_memory().available, MAX_ROWS
    return batch_for_memory(model.config, model.dtype.itemsize, n, max_tokens, free, cap)


def complete(model, tok, prompts: list[str], *, n: int = 1, temperatures: list[float] | float = 0.0,
             top_p: float = 1.0, max_new_tokens: int = 96, batch_size: int = 0, seed: int = 0,
             desc: str = "generate", stops: tuple[str, ...] = STOP_STRINGS, at_answer: bool = True,
             compile: bool = False, stats: dict | None = None, decoder: str = "hf",
             dtype: str | None = None) -> list[list[str]]:
    """n completions per prompt (sample j at temperatures[j % len]; 0 = greedy), each as the model wrote
    it after its prompt (leading whitespace kept: SFT joins it to the prompt as it stands) and ended as
    ``imm.grading.answers.cut_sample`` says: at a stop string and, with ``at_answer``, after its first
    final-answer statement. Decoding stops there too, and at every EOS id the model defines.

    The prompts' shared first tokens (a few-shot prefix) run once per call and their KV cache is
    copied into each batch (row-dropping path). ``compile``: static KV cache and a compiled step
    (imm/sampling/decode_compiled.py) instead; every batch is padded to one prompt length and row count,
    so it compiles once. ``decoder``: ``slots`` (or ``auto`` where the model is Llama-shaped) decodes
    the whole call by continuous batching in ``dtype`` (imm/sampling/slots.py); ``hf`` by batches of
    the transformers model in its own dtype. ``stats``: filled with the call's figures (new tokens
    generated, EOS excluded, per row and in all; how each row ended: eos | stop | length; rows per
    decoding call; the decoder and dtype; seconds)."""
    if not compile and decoder in ("slots", "auto") and slots_decoder.supports(model):
        return _complete_slots(model, tok, prompts, n=n, temperatures=temperatures, top_p=top_p,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, desc=desc, stops=stops,
                               at_answer=at_answer, stats=stats, dtype=dtype or "float32")
    if decoder == "slots":
        raise ValueError(f"model.decoder=slots: {type(model).__name__} is not a Llama-shaped model the slots decoder "
                         f"packs (imm.sampling.slots.ARCHITECTURES); use model.decoder=hf")
    temps = [temperatures] * n if isinstance(temperatures, (int, float)) else \
        [temperatures[j % len(temperatures)] for j in range(n)]
    tok.padding_side = "left"
    encoded = tok(prompts, add_special_tokens=True)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    common = 0 if compile else shared_prefix(encoded)
    prefix = Prefix(model, encoded[0][:common]) if common else None
    width = max(map(len, encoded)) - common  # the KV cache is sized in tokens, so the prompts are measured in tokens
    if compile:  # prompt length rounded up, so test sets of similar prompts share one compiled shape
        width = -(-width // WIDTH_STEP) * WIDTH_STEP
    size = batch_size or auto_batch_size(model, n, max_new_tokens + width + common)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    eos = eos_ids(model, tok)
    out: list[list[str]] = [[] for _ in prompts]
    new_tokens, lengths, ending = 0, [0] * (len(prompts) * n), [""] * (len(prompts) * n)
    start = time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False, mininterval=2)
    for b in range(0, len(order), size):
        idx = order[b:b + size]
        rows = [encoded[i][common:] for i in idx]
        if compile:  # same shape as every other batch: pad the last one with copies of its last prompt
            rows += rows[-1:] * (min(size, len(order)) - len(rows))
        enc = tok.pad({"input_ids": rows}, padding="max_length" if compile else True,
                      max_length=width if compile else None, return_tensors="pt")
        args = (model, tok, enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device))
        kw = dict(n=n, temps=temps, top_p=top_p, max_new_tokens=max_new_tokens, stops=stops)
        reasons: list[str] = []
        if compile:
            from imm.sampling.decode_compiled import decode_static  # transformers' generate, loaded when used

            ids = decode_static(*args, **kw, seed=seed * 1_000_003 + b)[:len(idx) * n]
        else:
            ids = decode(*args, **kw, generator=gen, at_answer=at_answer, eos=eos, prefix=prefix, reasons=reasons)
        new_tokens += sum(map(len, ids))
        texts = written(tok, [encoded[i][-1] for i in idx for _ in range(n)], ids)
        for j, i in enumerate(idx):
            rows_of = range(j * n, (j + 1) * n)
            lengths[i * n:(i + 1) * n] = [len(ids[r]) for r in rows_of]
            out[i] = [cut_sample(texts[r], stops, at_answer) for r in rows_of]
            ending[i * n:(i + 1) * n] = [_ending(texts[r], out[i][r - j * n], len(ids[r]), max_new_tokens,
                                                 reasons[r] if reasons else None) for r in rows_of]
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    seconds = time.perf_counter() - start
    endings = {k: ending.count(k) for k in ("eos", "stop", "length")}
    log.info("%s: %d rows, %d new tokens in %.2f s (%.0f new tokens/s), %d rows a call, %d prefix tokens shared; "
             "ended by eos %d, stop %d, token limit %d", desc, len(lengths), new_tokens, seconds,
             new_tokens / max(seconds, 1e-9), min(size, len(prompts)) * n, common, *endings.values())
    if stats is not None:
        stats.update(new_tokens=new_tokens, lengths=lengths, seconds=seconds, rows_per_call=min(size, len(prompts)) * n,
                     endings=ending, prefix_tokens=common, decoder="hf",
                     dtype=str(next(model.parameters()).dtype).removeprefix("torch."))
    return out


def _complete_slots(model, tok, prompts: list[str], *, n: int, temperatures, top_p: float, max_new_tokens: int,
                    batch_size: int, seed: int, desc: str, stops: tuple[str, ...], at_answer: bool, stats: dict | None,
                    dtype: str) -> list[list[str]]:
    """``complete`` on the slots decoder: one continuous-batching call for all prompts."""
    temps = [temperatures] * n if isinstance(temperatures, (int, float)) else \
        [temperatures[j % len(temperatures)] for j in range(n)]
    encoded = tok(prompts, add_special_tokens=True)["input_ids"]
    common = shared_prefix(encoded)
    own = [e[common:] for e in encoded]
    compute = DTYPES[dtype]
    rows = batch_size * n if batch_size else slot_rows(model.config, compute.itemsize, n,
                                                       max(map(len, own)) + max_new_tokens, model.device)
    start = time.perf_counter()
    reasons: list[str] = []
    bar = tqdm(total=len(prompts) * n, desc=desc, unit="sample", leave=False, mininterval=2)
    ids = decode_slots(model, tok, own, encoded[0][:common], n=n, temps=temps, top_p=top_p,
                       max_new_tokens=max_new_tokens, stops=stops, at_answer=at_answer, eos=eos_ids(model, tok),
                       generator=torch.Generator(device=model.device).manual_seed(seed), rows=rows, dtype=compute,
                       reasons=reasons, progress=bar.update)
    bar.close()
    seconds = time.perf_counter() - start
    texts = written(tok, [e[-1] for e in encoded for _ in range(n)], ids)
    out = [[cut_sample(texts[i * n + j], stops, at_answer) for j in range(n)] for i in range(len(prompts))]
    ending = [_ending(texts[r], out[r // n][r % n], len(ids[r]), max_new_tokens, reasons[r]) for r in range(len(ids))]
    new_tokens = sum(map(len, ids))
    log.info("%s: %d rows, %d new tokens in %.2f s (%.0f new tokens/s), slots decoder in %s, %d rows at once, "
             "%d prefix tokens shared; ended by eos %d, stop %d, token limit %d", desc, len(ids), new_tokens, seconds,
             new_tokens / max(seconds, 1e-9), dtype, rows, common,
             *(ending.count(k) for k in ("eos", "stop", "length")))
    if stats is not None:
        stats.update(new_tokens=new_tokens, lengths=[len(r) for r in ids], seconds=seconds, rows_per_call=rows,
                     endings=ending, prefix_tokens=common, decoder="slots", dtype=dtype)
    return out


SLOT_ROWS = 256  # rows the slots decoder runs at once on a CPU: past this a step's cost grows with the rows


def slot_rows(config, itemsize: int, n: int, width: int, device) -> int:
    """Rows for the slots decoder: SLOT_ROWS (GPU_MAX_ROWS on a GPU), fewer where their KV cache of
    ``width`` positions would pass KV_SHARE of free memory; a multiple of n."""
    if device.type == "cuda":
        free, cap = torch.cuda.mem_get_info(device)[0], GPU_MAX_ROWS
    else:
        import psutil

        free, cap = psutil.virtual_memory().available, SLOT_ROWS
    return batch_for_memory(config, itemsize, 1, width, free, cap) // n * n or n


def written(tok, anchors: list[int], ids: list[list[int]]) -> list[str]:
    """The new tokens' text as it reads after the prompt. Decoded after the prompt's last token, then that
    token's own text taken off: SentencePiece tokenizers drop a sequence's leading space on decoding,
    which would change the text SFT later joins to the prompt."""
    full = tok.batch_decode([[a] + row for a, row in zip(anchors, ids)], skip_special_tokens=True)
    heads = tok.batch_decode([[a] for a in anchors], skip_special_tokens=True)
    return [f[len(h):] if f.startswith(h) else tok.decode(row, skip_special_tokens=True)
            for f, h, row in zip(full, heads, ids)]


def ending_shares(endings: list[str]) -> dict[str, float]:
    """Shares of samples that ran to the token limit and that a stop string or their answer ended."""
    n = max(1, len(endings))
    return {"ran_to_limit": endings.count("length") / n, "stopped": endings.count("stop") / n} if endings else {}


def _ending(raw: str, kept: str, n_ids: int, limit: int, decoded: str | None) -> str:
    """How a sample ended: stop (cut at a stop string or its answer), eos, or length (ran to the limit)."""
    if kept != raw.rstrip():
        return "stop"
    if decoded in ("eos", "stop"):
        return decoded
    return "length" if n_ids >= limit else "eos"


def synthesize(model, tok, prompts: list[str], cfg: GenerateConfig, iteration: int,
               engine: EngineConfig | None = None, stats: dict | None = None,
               decoding: dict | None = None) -> list[list[dict]]:
    """k samples per prompt as [{"text", "temperature", "tokens", "ending"}], sample i at
    temperatures[i % len] (``tokens``: new tokens; ``ending``: eos | stop | length; ``stats``: as
    ``complete`` fills it; ``decoding``: the decoder and its dtype, as ``complete`` takes them)."""
    engine = (engine or EngineConfig()).given(cfg.engine_overrides())
    temps = [cfg.temperatures[i % len(cfg.temperatures)] for i in range(cfg.k)]
    figures = {} if stats is None else stats
    texts = complete(model, tok, prompts, n=cfg.k, temperatures=temps, top_p=cfg.top_p,
                     max_new_tokens=cfg.max_new_tokens, batch_size=engine.batch_size,
                     seed=cfg.seed * 1_000_003 + iteration, desc=f"sample it{iteration + 1}", compile=engine.compile,
                     at_answer=cfg.stop_at_answer, stats=figures, **(decoding or {}))
    k = cfg.k
    return [[{"text": t, "temperature": temp, "tokens": figures["lengths"][i * k + j], "ending": figures["endings"][i * k + j]}
             for j, (t, temp) in enumerate(zip(group, temps))] for i, group in enumerate(texts)]
