"""The self-improvement loop, one stage a line: data → generate → filter → train → merge → evaluate.

    for t in 0..T-1:
        samples = synthesize(current model, training questions)      # k samples over temperatures
        kept    = keep_correct(samples)                               # final answer == gold, by value
        rows    = build_trainset(method, kept of all iterations)      # vanilla / mixture / accumulation
        θ_sft   = SFT(current model, rows)                            # response-only loss
        θ_m     = α·θ + (1−α)·(θ_prev + DARE(θ_sft − θ_prev))          # imm / iimm only
        evaluate θ_sft (and θ_m) on ID and OOD test sets
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from imm import generate, methods, sft
from imm.config import Config
from imm.data import load_data
from imm.evaluate import evaluate
from imm.filtering import keep_correct
from imm.importance import layer_importance
from imm.merge import importance_scales, merge_state_dicts
from imm.models import load_model, load_tokenizer, set_weights, weights
from imm.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class Result:
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # ("Base"|"SFT t"|"Merge t", metrics)
    sets: list[str] = field(default_factory=list)


def run(cfg: Config, tracker: Tracker, out: Path) -> Result:
    data = load_data(cfg.dataset)
    tok = load_tokenizer(cfg.model.path)
    model = load_model(cfg.model)
    prompt = lambda q: cfg.prompt.format(question=q)  # noqa: E731
    base = weights(model)  # θ, kept for every merge
    result = Result(sets=list(data.tests))

    def record(label: str, kind: str, step: int, metrics: dict[str, float]) -> None:
        result.rows.append((label, metrics))
        tracker.metrics({f"eval/{kind}/{k}": v for k, v in metrics.items()}, step)
        log.info("%s: ID %.3f  OOD %.3f", label, metrics.get("id", float("nan")), metrics.get("ood", float("nan")))

    record("Base", "base", 0, evaluate(model, tok, data, prompt, cfg.eval, desc="eval base"))
    prompts = [prompt(item["question"]) for item in data.train]
    history: list[list[dict]] = []
    for t in range(cfg.run.iterations):
        step = t + 1
        samples = generate.synthesize(model, tok, prompts, cfg.generate, t)
        kept, y = keep_correct(data.train, samples, t)
        history.append(kept)
        tracker.metrics({"gen/yield": y.rate, "gen/kept": y.kept, "gen/sampled": y.sampled,
                         "gen/coverage": y.coverage, "gen/questions_covered": y.covered}, step)
        _save_samples(out / "samples" / f"iter{step}.jsonl", kept, tracker)
        rows = methods.build_trainset(cfg.method, history, cfg.run.seed)
        log.info("iteration %d: kept %d/%d samples (yield %.3f), %d/%d questions covered; training on %d",
                 step, y.kept, y.sampled, y.rate, y.covered, y.questions, len(rows))
        if not rows:
            log.warning("iteration %d kept no sample: the model is left unchanged this iteration", step)
            tracker.metrics({"sft/skipped": 1.0}, step)
            previous = dict(result.rows[-1][1])
            record(f"SFT {step} (=)", "sft", step, previous)
            if cfg.method.merges:
                record(f"Merge {step} (=)", "merged", step, previous)
            continue

        prev = weights(model)  # θ_prev: the model this iteration starts from
        scales = None
        if cfg.method.importance_scaled:
            importance = layer_importance(model, tok, rows, prompt)
            scales = importance_scales(importance)
            tracker.metrics({f"importance/layer{n}": v for n, v in importance.items()}, step)
        stats = sft.train(model, tok, rows, prompt, cfg.sft, t)
        tracker.metrics({"sft/loss": stats["loss"], "sft/first_loss": stats["first_loss"],
                         "sft/steps": stats["steps"], "sft/rows": len(rows),
                         "sft/tokens_per_s": stats["tokens_per_s"]}, step)
        record(f"SFT {step}", "sft", step, evaluate(model, tok, data, prompt, cfg.eval, desc=f"eval sft{step}"))
        _checkpoint(model, tok, out / f"sft{step}", cfg.run.save_checkpoints)

        if cfg.method.merges:
            merged, ms = merge_state_dicts(base, prev, weights(model), cfg.merge, t, scales)
            set_weights(model, merged)
            tracker.metrics({"merge/update_norm": ms.update_norm, "merge/delta_norm": ms.delta_norm,
                             "merge/density": ms.density}, step)
            record(f"Merge {step}", "merged", step,
                   evaluate(model, tok, data, prompt, cfg.eval, desc=f"eval merge{step}"))
            _checkpoint(model, tok, out / f"merge{step}", cfg.run.save_checkpoints)
    return result


def _save_samples(path: Path, kept: list[dict], tracker: Tracker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in kept)
    tracker.artifact(path, "samples")


def _checkpoint(model, tok, path: Path, enabled: bool) -> None:
    if enabled:
        model.save_pretrained(path)
        tok.save_pretrained(path)
