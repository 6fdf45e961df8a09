"""Evaluation: pass@k on every test set (pass@1 greedy by default), with ID and OOD means, and per
set the share of samples with no readable final answer and the number of checks that timed out
(so format drift after SFT is not read as lost reasoning); for testbed sets also the shares of
sound, shortcut and flawed reasoning among the right answers (imm/analysis/reasoning.py), the
share of samples and of right answers in each surface form, and the mechanism rates
(imm/analysis/mechanism.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List

from imm.analysis import mechanism
from imm.analysis.reasoning import item_records, step_metrics
from imm.sampling import complete, ending_shares
from imm.sampling.decode import shared_prefix
from imm.grading.checks import grade_groups
from imm.grading.passk import mean_pass_at_k


@dataclass
class EvalConfig:
    n: int = 1  # samples per test item; 1 with temperature 0 = greedy pass@1
    temperature: float = 0.0  # 0 = greedy
    ks: List[int] = field(default_factory=lambda: [1])  # pass@k values to report, each <= n
    max_new_tokens: int = 96
    batch_size: int = 0  # prompts per decoding call; 0 = chosen from memory
    stop_at_answer: bool = True  # end an answer after its first final-answer statement (false: only EOS / stop strings)

    def __post_init__(self) -> None:
        if self.n < 1 or not self.ks or any(not 1 <= k <= self.n for k in self.ks):
            raise ValueError(f"eval.ks={self.ks} must be non-empty with every k in [1, eval.n={self.n}]")
        if self.temperature == 0 and self.n > 1:
            raise ValueError("eval.n > 1 needs eval.temperature > 0 (greedy samples are identical)")


def decoding_groups(tok, tests: dict[str, list[dict]], prompt_fn, slack: int = 32) -> list[list[str]]:
    """Test sets that decode in one call: consecutive sets whose prompts together keep the few-shot
    prefix each has on its own (within ``slack`` tokens), so merging them costs no prefix sharing and
    gives larger batches (a small model decodes a few rows at the cost of many)."""
    groups: list[list[str]] = []
    kept: list[list[int]] = []  # per group: its prompts' tokens
    own = 0
    for name, items in tests.items():
        enc = tok([prompt_fn(it) for it in items], add_special_tokens=True)["input_ids"]
        mine = shared_prefix(enc)
        if groups and shared_prefix(kept[-1] + enc) >= max(own, mine) - slack:
            groups[-1].append(name)
            kept[-1] += enc
            own = max(own, mine)
        else:
            groups.append([name])
            kept.append(list(enc))
            own = mine
    return groups


def _decoded(model, tok, tests: dict[str, list[dict]], prompt_fn, cfg: EvalConfig, desc: str, complete_fn,
             compile: bool, decoding: dict):
    """(set, completions, endings) of every set, group by group: from another engine (vLLM) in one call
    (one engine start-up per evaluation stage, the engine batches across sets), from the hf decoder one
    call per group of sets that share their few-shot prefix. Endings are None where the engine gives
    none. A group decodes only when the caller asks for its first set (it grades the last group meanwhile)."""
    groups = [list(tests)] if complete_fn is not None else decoding_groups(tok, tests, prompt_fn)
    for group in groups:
        prompts = [prompt_fn(it) for name in group for it in tests[name]]
        figures: dict = {}
        if complete_fn is not None:
            outs = complete_fn(prompts, n=cfg.n, temperatures=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                               at_answer=cfg.stop_at_answer)
        else:
            outs = complete(model, tok, prompts, n=cfg.n, temperatures=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                            batch_size=cfg.batch_size, desc=f"{desc} {'+'.join(group)}", compile=compile,
                            at_answer=cfg.stop_at_answer, stats=figures, **decoding)
        endings, start = figures.get("endings"), 0
        for name in group:
            size = len(tests[name])
            yield name, outs[start:start + size], None if endings is None else endings[start * cfg.n:(start + size) * cfg.n]
            start += size


def format_metrics(rows: list[dict], groups: dict[str, list[str]]) -> dict[str, float]:
    """Format apart from reasoning, on each item's first answer: ``<set>/answered``, the share that
    states a final answer; ``<set>/right_answered``, pass@1 among those (0 where none does); the same
    for each group (id, ood) as the mean over its sets."""
    out: dict[str, float] = {}
    for name in sorted({r["set"] for r in rows}):
        mine = [r for r in rows if r["set"] == name]
        answered = [r for r in mine if r["answered"]]
        out[f"{name}/answered"] = len(answered) / len(mine)
        out[f"{name}/right_answered"] = sum(r["right"] for r in answered) / len(answered) if answered else 0.0
    for group, sets in groups.items():
        for key in ("answered", "right_answered"):
            if sets and all(f"{s}/{key}" in out for s in sets):
                out[f"{group}/{key}"] = sum(out[f"{s}/{key}"] for s in sets) / len(sets)
    return out


def evaluate(model, tok, data, prompt_fn, cfg: EvalConfig, desc: str = "eval", complete_fn=None,
             compile: bool = False, records: list | None = None, decoding: dict | None = None) -> dict[str, float]:
    """Metrics {set: pass@1, set/pass_at_k: ..., id[/pass_at_k]: mean over ID sets, ood[/...]: OOD,
    set/no_answer: share of samples without a final answer, set/timeouts: checks out of time,
    set/answered and set/right_answered (and per group): the first answer's format apart from its
    reasoning (``format_metrics``),
    set/ran_to_limit and set/stopped: shares of samples that ran to the token limit / were ended by a
    stop string or their answer statement,
    set/sound_share, shortcut_share, flawed_share (testbed sets; id and ood pooled)}.

    ``compile``: decode on the static, compiled path (imm.sampling.complete); ``decoding``: the decoder
    and its dtype (imm.sampling.engine.decoding_plan).
    ``records``: a list that receives one row per test item (imm.analysis.reasoning.item_records)."""
    metrics: dict[str, float] = {}
    rows: list[dict] = []
    # a group's sets are graded in a thread while the model decodes the next group (the checks run in the
    # grading pool's processes or in Python; the order of the results is the order of the sets)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imm-grade") as grader:
        graded = [(name, outs, endings, grader.submit(grade_groups, outs, data.tests[name]))
                  for name, outs, endings in _decoded(model, tok, data.tests, prompt_fn, cfg, desc, complete_fn, compile,
                                                            decoding or {})]
        for name, outs, endings, done in graded:
            items = data.tests[name]
            if endings is not None:  # the hf decoder's endings (vLLM reports none)
                metrics |= {f"{name}/{k}": v for k, v in ending_shares(endings).items()}
            verdicts, report = done.result()
            at_limit = None if endings is None else [[e == "length" for e in endings[i * cfg.n:(i + 1) * cfg.n]]
                                                     for i in range(len(items))]
            rows += item_records(name, outs, items, verdicts, at_limit)
            counts = [(len(o), sum(ok)) for o, ok in zip(outs, verdicts)]
            metrics[f"{name}/no_answer"] = report.no_answer / max(1, len(report.correct))
            metrics[f"{name}/timeouts"] = report.timeouts
            for k in cfg.ks:
                key = name if k == 1 else f"{name}/pass_at_{k}"  # MLflow names allow no "@"
                metrics[key] = mean_pass_at_k(counts, k)
    for group, sets in (("id", data.id_sets), ("ood", data.ood_sets)):
        for suffix in ["" if k == 1 else f"/pass_at_{k}" for k in cfg.ks]:
            if sets:
                metrics[group + suffix] = sum(metrics[s + suffix] for s in sets) / len(sets)
    groups = {"id": data.id_sets, "ood": data.ood_sets}
    metrics |= format_metrics(rows, groups) | step_metrics(rows, groups) | mechanism.set_metrics(rows, groups)
    if records is not None:
        records += rows
    return metrics
