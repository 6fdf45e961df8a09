"""Evaluation: pass@k on every test set (pass@1 greedy by default), with ID and OOD means, and per
set the share of samples with no readable final answer and the number of checks that timed out
(so format drift after SFT is not read as lost reasoning); for testbed sets also the shares of
sound, shortcut and flawed reasoning among the right answers (imm/reasoning.py), the share of
samples and of right answers in each surface form, and the mechanism rates (imm/mechanism.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List

from imm import mechanism
from imm.sampling import complete, ending_shares
from imm.grading.checks import grade_groups
from imm.grading.passk import mean_pass_at_k
from imm.reasoning import item_records, step_metrics


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


def _one_call(complete_fn, tests: dict[str, list[dict]], prompt_fn, cfg: EvalConfig) -> dict[str, list]:
    """Every test set's completions from another engine (vLLM) in one call: one engine start-up per
    evaluation stage, and the engine batches across sets."""
    prompts = [prompt_fn(it) for items in tests.values() for it in items]
    outs = complete_fn(prompts, n=cfg.n, temperatures=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                       at_answer=cfg.stop_at_answer)
    by_set, start = {}, 0
    for name, items in tests.items():
        by_set[name], start = outs[start:start + len(items)], start + len(items)
    return by_set


def evaluate(model, tok, data, prompt_fn, cfg: EvalConfig, desc: str = "eval", complete_fn=None,
             compile: bool = False, records: list | None = None) -> dict[str, float]:
    """Metrics {set: pass@1, set/pass_at_k: ..., id[/pass_at_k]: mean over ID sets, ood[/...]: OOD,
    set/no_answer: share of samples without a final answer, set/timeouts: checks out of time,
    set/ran_to_limit and set/stopped: shares of samples that ran to the token limit / were ended by a
    stop string or their answer statement,
    set/sound_share, shortcut_share, flawed_share (testbed sets; id and ood pooled)}.

    ``compile``: decode on the static, compiled path (imm.sampling.complete).
    ``records``: a list that receives one row per test item (imm.reasoning.item_records)."""
    metrics: dict[str, float] = {}
    rows: list[dict] = []
    engine_outs = _one_call(complete_fn, data.tests, prompt_fn, cfg) if complete_fn is not None else {}
    # a set is graded in a thread while the model decodes the next (the checks run in the grading pool's
    # processes or in Python; the order of the results is the order of the sets)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imm-grade") as grader:
        graded = []
        for name, items in data.tests.items():
            figures: dict = {}  # the hf decoder's per-sample lengths and endings (vLLM reports none)
            if complete_fn is not None:
                outs = engine_outs[name]
            else:
                outs = complete(model, tok, [prompt_fn(it) for it in items], n=cfg.n, temperatures=cfg.temperature,
                                max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, desc=f"{desc} {name}",
                                compile=compile, at_answer=cfg.stop_at_answer, stats=figures)
                metrics |= {f"{name}/{k}": v for k, v in ending_shares(figures.get("endings", [])).items()}
            graded.append((name, items, outs, figures.get("endings"), grader.submit(grade_groups, outs, items)))
        for name, items, outs, endings, done in graded:
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
    metrics |= step_metrics(rows, groups) | mechanism.set_metrics(rows, groups)
    if records is not None:
        records += rows
    return metrics
