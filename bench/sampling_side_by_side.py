"""Sampling side by side: plain transformers ``generate`` against imm's hf backend, on the same rows.

A random model never ends a sample early, so every row would run to the length limit and the
row-dropping loop would show nothing. ``StopRule`` gives rows a length instead, the same way for
every decoding loop: at each step, from the tokens generated so far (g), the row's length (its
attention mask's sum: prompt + g) and its last token, EOS is forced once g reaches ``floor`` and a
hash of (last token, length) falls under 1/``mean_tail``, and at g = ``cap``; EOS is never drawn
otherwise. Stateless per row (no row index, so rows may leave the batch; the length keeps greedy
rows of different prompts apart even when a random model repeats one token), checked on the device
(no wait on the host). ``StopRule.fixed(n)``: every row exactly n tokens.

It applies to every Qwen2-style model through two class-level wrappers (``stop_rule(rule)``):
``PreTrainedModel.__call__`` for imm's own loop (which calls the model directly) and
``GenerationMixin.generate`` (a logits processor) for plain and static-cache/compiled ``generate``.
Run ``python -m bench.sampling_side_by_side --rule FLOOR,MEAN_TAIL,CAP -- <imm.main overrides>`` to
run the real entrypoint with the rule on (imm.main under runpy, nothing else changed).
"""

from __future__ import annotations

import json
import runpy
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList, PreTrainedModel

FORCE = 1e4  # an EOS logit that wins at any temperature the paper uses (0.2: 5e4 after scaling)


@dataclass(frozen=True)
class StopRule:
    floor: int = 50  # no row ends before this many new tokens
    mean_tail: int = 170  # then it ends with chance 1/mean_tail a step: mean length ≈ 200 at these values
    cap: int = 400  # every row ends here

    @classmethod
    def fixed(cls, n: int) -> "StopRule":
        return cls(floor=n, mean_tail=0, cap=n)

    @classmethod
    def parse(cls, text: str) -> "StopRule":
        floor, tail, cap = (int(x) for x in text.split(","))
        return cls(floor, tail, cap)

    def __str__(self) -> str:
        return f"{self.floor},{self.mean_tail},{self.cap}"

    def eos_logit(self, last: torch.Tensor, g: int, length: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """The EOS column after the rule: FORCE where the row ends now, -inf elsewhere (``g``: new tokens
        so far, the same for every row of a call; ``length``: each row's tokens, prompt padding excluded)."""
        if g >= self.cap:
            return torch.full_like(current, FORCE)
        if g < self.floor or not self.mean_tail:
            return torch.full_like(current, float("-inf"))
        h = (last.long() * 2654435761 + length.long() * 40503 + 12345) % 4294967291  # a hash of (token, length)
        h = (h * 48271) % 2147483647  # one Lehmer step spreads it over the residues
        return torch.where(h % self.mean_tail == 0, FORCE, float("-inf")).to(current.dtype)


class RuleProcessor(LogitsProcessor):
    """The rule inside ``generate``: g from the running sequence's width minus the prompt's, each row's
    length from its prompt's (rows never leave a ``generate`` batch)."""

    def __init__(self, rule: StopRule, mask: torch.Tensor, eos: int):
        self.rule, self.width, self.prompt_lengths, self.eos = rule, mask.shape[1], mask.sum(-1), eos

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        g = input_ids.shape[1] - self.width
        scores[:, self.eos] = self.rule.eos_logit(input_ids[:, -1], g, self.prompt_lengths + g, scores[:, self.eos])
        return scores


_STATE: dict = {"rule": None, "in_generate": False, "forwards": 0}


@contextmanager
def stop_rule(rule: StopRule | None):
    """Every Qwen2-style causal LM decodes under ``rule`` inside the block (None: left as it is)."""
    if rule is None:
        yield
        return
    call, generate = PreTrainedModel.__call__, GenerationMixin.generate

    def ruled_call(self, *args, **kwargs):
        out = call(self, *args, **kwargs)
        mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
        if _STATE["in_generate"] or torch.is_grad_enabled() or getattr(out, "logits", None) is None \
                or mask is None or ids is None or mask.dim() != 2:
            return out  # generate has its processor; training and scoring are left alone
        _STATE["forwards"] += 1
        if ids.shape[1] > 1:  # the prefill: the prompt width every later step counts from
            self._rule_width = mask.shape[1]
        eos = self.config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        g = mask.shape[1] - getattr(self, "_rule_width", mask.shape[1])
        last = out.logits[:, -1]
        last[:, eos] = rule.eos_logit(ids[:, -1], g, mask.sum(-1), last[:, eos])
        return out

    def ruled_generate(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        eos = self.generation_config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        procs = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        procs.append(RuleProcessor(rule, mask, eos))
        _STATE["in_generate"] = True
        try:
            return generate(self, *args, logits_processor=procs, **kwargs)
        finally:
            _STATE["in_generate"] = False

    PreTrainedModel.__call__, GenerationMixin.generate = ruled_call, ruled_generate
    _STATE["rule"] = rule
    try:
        yield
    finally:
        PreTrainedModel.__call__, GenerationMixin.generate = call, generate
        _STATE["rule"] = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def length_stats(lengths: list[int]) -> dict:
    return {"rows": len(lengths), "new_tokens": sum(lengths), "min_new": min(lengths), "max_new": max(lengths),
            "mean_new": round(statistics.fmean(lengths), 1)}


def plain_generate(model, tok, prompts: list[str], n: int, batch_rows: int, max_new: int, seed: int) -> list[int]:
    """transformers' ``generate`` over the prompts' n rows each, ``batch_rows`` rows a call, sampling
    at the paper's middle temperature; new tokens per row (up to EOS)."""
    rows = [p for p in prompts for _ in range(n)]
    tok.padding_side = "left"
    torch.manual_seed(seed)
    lengths = []
    for b in range(0, len(rows), batch_rows):
        enc = tok(rows[b:b + batch_rows], return_tensors="pt", padding=True, return_token_type_ids=False)
        enc = enc.to(model.device)
        out = model.generate(**enc, do_sample=True, temperature=0.4, top_k=0, top_p=1.0, max_new_tokens=max_new,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        ended = (new == tok.eos_token_id).int()
        has_end = ended.any(1)
        first = ended.argmax(1)
        lengths += torch.where(has_end, first, new.shape[1]).tolist()
    return lengths


def imm_complete(model, tok, prompts: list[str], n: int, max_new: int, seed: int, compile: bool) -> tuple[list[int], int]:
    """imm's hf backend (``imm.sampling.complete``, automatic batch size), the paper's temperatures."""
    from imm.sampling import complete

    stats: dict = {}
    complete(model, tok, prompts, n=n, temperatures=[0.2, 0.4, 0.6], max_new_tokens=max_new, seed=seed,
             desc="side by side", stops=(), compile=compile, stats=stats)
    return stats["lengths"], stats["rows_per_call"]


def measure(label: str, lengths_name: str, run, device: torch.device) -> dict:
    sync(device)
    start = time.perf_counter()
    lengths, rows_per_batch = run()
    sync(device)
    seconds = time.perf_counter() - start
    line = {"compare": label, "lengths": lengths_name, "rows_per_batch": rows_per_batch, "seconds": round(seconds, 3),
            **length_stats(lengths)}
    line["tokens_per_s"] = round(line["new_tokens"] / seconds, 1)
    print(json.dumps(line), flush=True)
    return line


def compare(model, tok, prompts: list[str], n: int, batches: list[int], rules: dict[str, StopRule],
            compiled: bool = True, seed: int = 0) -> list[dict]:
    """One JSON line per (method, lengths): plain generate at each batch of ``batches`` rows for the
    first lengths, then at the first batch and the best one (each on its first batch of rows only:
    every batch has the same shape), imm's hf backend on all rows, and its compiled path (after one
    call that compiles it, with the same shapes)."""
    device, lines = model.device, []
    rows = len(prompts) * n
    max_new = max(r.cap for r in rules.values())  # one length limit: one compiled shape for every rule
    for name, rule in rules.items():
        with stop_rule(rule):
            tried = [line for line in lines if line["compare"].startswith("generate_b")]
            if tried:  # after the first lengths: batch 256 (the first) and the best batch only
                best = max(tried, key=lambda line: line["tokens_per_s"])["compare"]
                batches = list(dict.fromkeys([batches[0], int(best.removeprefix("generate_b"))]))
            for b in batches:
                take = max(1, min(b, rows) // n)  # the first batch's prompts
                lines.append(measure(f"generate_b{b}", name, lambda: (
                    plain_generate(model, tok, prompts[:take], n, b, max_new, seed), min(b, rows)), device))
            lines.append(measure("imm_hf", name, lambda: imm_complete(model, tok, prompts, n, max_new, seed, False),
                                 device))
        if compiled:
            if not any(line["compare"] == "imm_hf_compiled" for line in lines):
                with stop_rule(StopRule.fixed(1)):  # compiles and captures the step, then ends at once
                    measure("imm_hf_compiled_first_call", "1 token (compiles the step)", lambda: imm_complete(
                        model, tok, prompts, n, max_new, seed, True), device)
            with stop_rule(rule):
                lines.append(measure("imm_hf_compiled", name, lambda: imm_complete(
                    model, tok, prompts, n, max_new, seed, True), device))
    return lines


def table(lines: list[dict]) -> str:
    """The side-by-side as markdown: one row per method, fixed and realistic columns."""
    names = list(dict.fromkeys(line["lengths"] for line in lines))
    methods = list(dict.fromkeys(line["compare"] for line in lines))
    get = {(line["compare"], line["lengths"]): line for line in lines}
    head = "| method | " + " | ".join(f"{n}: new tok/s (rows a batch, mean new)" for n in names) + " |"
    out = [head, "|---|" + "---:|" * len(names)]
    for m in methods:
        cells = [f"{get[m, n]['tokens_per_s']:,.0f} ({get[m, n]['rows_per_batch']}, {get[m, n]['mean_new']})"
                 if (m, n) in get else "" for n in names]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def profile(model, tok, prompts: list[str], n: int, rule: StopRule, seed: int = 0, top: int = 12) -> dict:
    """One imm sampling call under torch.profiler: the top ops by device time and the host-device
    syncs per decode step (stream/device synchronizations, device-to-host copies, ``item()``)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = model.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    before = _STATE["forwards"]
    with stop_rule(rule), torch_profile(activities=acts) as prof:
        lengths, _ = imm_complete(model, tok, prompts, n, rule.cap, seed, False)
        sync(model.device)
    steps = max(1, _STATE["forwards"] - before)
    events = prof.key_averages()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=top), flush=True)
    syncs = {e.key: e.count for e in events if e.key in (
        "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::item",
        "aten::_local_scalar_dense", "cudaMemcpyAsync")}
    out = {"profile": "imm_hf", "forwards": steps, "new_tokens": sum(lengths),
           "syncs_per_step": {k: round(v / steps, 2) for k, v in syncs.items()}}
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    """``--rule F,T,C -- overrides``: run ``imm.main`` with the rule on every model it decodes with."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "--rule":
        raise SystemExit("usage: python -m bench.sampling_side_by_side --rule FLOOR,MEAN_TAIL,CAP -- <overrides>")
    rule, rest = StopRule.parse(argv[1]), argv[2:]
    rest = rest[1:] if rest[:1] == ["--"] else rest
    from importlib.util import find_spec

    sys.argv = [find_spec("imm.main").origin, *rest]  # Hydra names the job and finds conf/ from the entrypoint's file
    with stop_rule(rule):
        runpy.run_module("imm.main", run_name="__main__")


if __name__ == "__main__":
    main()
