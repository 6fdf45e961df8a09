"""Static-shape decoding through transformers' ``generate``: a preallocated KV cache and a compiled step.

On a GPU a decode step of a small model costs more in Python and kernel launches than in arithmetic.
With ``cache_implementation="static"`` transformers keeps the KV cache in fixed tensors and compiles
the step with ``torch.compile(mode="reduce-overhead")``, which replays it as one CUDA graph. Rows do
not leave the batch (the shapes must stay fixed); the call ends when every row has met EOS or a stop
string. Per-row temperatures and top-p come in as one logits processor, so all k samples of a prompt
still share one call. The caller keeps shapes fixed across calls (imm.sampling.complete pads every
batch to one prompt length and row count), so the step compiles once per stage.
"""

from __future__ import annotations

import torch
from transformers import CompileConfig, GenerationConfig, LogitsProcessor, LogitsProcessorList

from imm.sampling.decode import nucleus_logits

RECOMPILE_LIMIT = 64  # shapes one process may compile (new models, new test sets) before torch falls back to eager


class RowSampling(LogitsProcessor):
    """Each row at its own temperature then top-p (imm.sampling.decode.sample_next's rule); rows at
    temperature 0 keep only their argmax, so sampling them is greedy."""

    def __init__(self, temps: torch.Tensor, top_p: float):
        self.temps, self.top_p = temps, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        greedy = self.temps == 0
        warped = nucleus_logits(scores, torch.where(greedy, 1.0, self.temps), self.top_p)
        only_best = torch.full_like(warped, float("-inf")).scatter(-1, scores.argmax(-1, keepdim=True), 0.0)
        return torch.where(greedy[:, None], only_best, warped)


def generation_config(tok, *, sampling: bool, max_new_tokens: int) -> GenerationConfig:
    """Every sampling knob set explicitly, so nothing comes from the checkpoint's generation_config.json
    (instruct checkpoints ship top_k, top_p, repetition penalties)."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sampling, temperature=1.0, top_k=0, top_p=1.0, min_p=None,
        repetition_penalty=1.0, num_beams=1, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, cache_implementation="static",
        compile_config=CompileConfig(dynamic=False))


def decode_static(model, tok, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, n: int, temps: list[float],
                  top_p: float = 1.0, max_new_tokens: int = 96, stops: tuple[str, ...] = (), seed: int = 0
                  ) -> list[list[int]]:
    """imm.sampling.decode.decode's contract (new ids per row, prompt-major, EOS left out) on the static path.

    On a device other than a GPU the step is compiled all the same (no CUDA graphs there: this is for
    checking the path, not for speed)."""
    device = input_ids.device
    row_temps = torch.tensor(temps, dtype=torch.float32, device=device).repeat(input_ids.shape[0])
    sampling = bool((row_temps > 0).any())
    config = generation_config(tok, sampling=sampling, max_new_tokens=max_new_tokens)
    if device.type != "cuda":
        config.compile_config._compile_all_devices = True  # transformers compiles on GPUs alone unless told
    _allow_recompiles()
    extra = {"logits_processor": LogitsProcessorList([RowSampling(row_temps, top_p)])} if sampling else {}
    if stops:
        extra.update(stop_strings=list(stops), tokenizer=tok)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        # rows repeated here rather than by num_return_sequences, which greedy generate refuses for n > 1
        out = model.generate(input_ids=input_ids.repeat_interleave(n, 0),
                             attention_mask=attention_mask.repeat_interleave(n, 0), generation_config=config, **extra)
    return [_until_eos(row, tok.eos_token_id, tok.pad_token_id) for row in out[:, input_ids.shape[1]:].tolist()]


def _allow_recompiles() -> None:
    """Every new model (each iteration's SFT and merge) and prompt width is a recompile of the same step;
    torch's default limit (8) would silently send a long run back to eager decoding."""
    dynamo = torch._dynamo.config
    name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    setattr(dynamo, name, max(getattr(dynamo, name), RECOMPILE_LIMIT))


def _until_eos(row: list[int], eos: int, pad: int) -> list[int]:
    """A finished row's new ids: up to its first EOS, without the padding generate adds after a stop string."""
    if eos in row:
        row = row[:row.index(eos)]
    while row and row[-1] == pad:
        row.pop()
    return row
