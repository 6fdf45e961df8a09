"""The self-improvement loop, one stage a line: data → generate → filter → train → merge → evaluate.

    for t in 0..T-1:
        kept  = synthesize(current model)                  # k samples per question, keep answer == gold
        rows  = trainset(method, kept of iterations 0..t)  # vanilla / mixture / accumulation
        θ_sft = SFT(current model, rows)                   # response-only loss; star: SFT(base model, rows)
        θ_m   = α·θ + (1−α)·(θ_prev + DARE(θ_sft − θ_prev)) # imm / iimm only (iimm: per-layer scales)
        evaluate θ_sft (and θ_m) on the ID and OOD test sets, and per item against the base model
                                                           # run.evaluate=final: the base and the last model only

merge.schedule moves the merge (imm/merge/schedule.py): ``round`` as above; ``final`` after the
last round only (the rounds before run as vanilla); ``steps`` inside SFT, every merge.every steps.

On the testbed the kept samples and the right test answers are also read step by step (sound,
shortcut, flawed: imm/analysis/reasoning.py), and every evaluation logs which items were forgotten or newly
solved since the base model. ``lineage.jsonl`` in the job folder names each stage's input model.

Every stage goes through the stage store (imm/stages.py): outputs shared between jobs are computed
once, and a job that is killed and started again continues at its first unfinished stage.
"""

from __future__ import annotations

import functools
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from imm import stages as steps
from imm.config import Config
from imm.data import load_data
from imm.merge.rules import get as get_rule, importance_scales
from imm.merge.schedule import merges_after
from imm.models import load_tokenizer
from imm.store import StageStore, write_jsonl
from imm.tracking import Tracker
from imm.analysis.forgetting import chance_corrected, chance_level, verified_pass1
from imm.analysis.reasoning import transitions
from imm.analysis.weight_change import weight_change

log = logging.getLogger(__name__)


@dataclass
class Result:
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # ("Base"|"SFT t"|"Merge t", metrics)
    sets: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage, summed over iterations
    kept: list[tuple[int, dict]] = field(default_factory=list)  # (iteration, yield with the kept step shares)
    lineage: list[dict] = field(default_factory=list)  # {stage, step, model: input key, out: output key}


def run(cfg: Config, tracker: Tracker, out: Path, store: StageStore) -> Result:
    data = load_data(cfg.dataset)
    tracker.datasets(data, cfg.dataset.name)
    ctx = steps.Context(cfg, store, data, load_tokenizer(cfg.model.path),
                        load_tokenizer(cfg.teacher.path) if cfg.teacher else None)
    result = Result(sets=list(data.tests))
    base = steps.base_ref(cfg.model)
    teacher = steps.base_ref(cfg.teacher, teacher=True) if cfg.teacher else None
    chance = {name: chance_level([str(item["answer"]) for item in items]) for name, items in data.tests.items()}
    stage = _Stages(result, tracker, {"id": data.id_sets, "ood": data.ood_sets}, chance, out / "evaluations")
    with stage("evaluate", 0):
        stage.record("Base", "base", 0, *steps.evaluate_stage(ctx, base), final=True)  # final/* logged first
    tracker.metrics({f"data/overlap/{name}": n for name, n in data.overlap.items()}, 0)  # 0 unless allowed
    evaluate = functools.partial(_evaluate, ctx, base, stage)
    model, history = base, []
    prev = base  # θ_prev: the last merged model (the base before any merge)
    schedule = cfg.merge.schedule if cfg.method.merges else "none"
    every = cfg.run.evaluate == "all"  # final: the base and the last model only (run.evaluate)
    for t in range(cfg.run.iterations):
        step = t + 1
        start = sft_start(cfg.method, base, model)
        with stage("generate", step):
            kept_key, kept, y = steps.synthesize_stage(ctx, teacher or model, t)  # distillation: the teacher samples
        result.lineage.append({"stage": "synthesize", "step": step, "model": (teacher or model).key, "out": kept_key})
        result.kept.append((step, y))
        history.append(kept)
        tracker.metrics(_flat(y, "gen/"), step)  # numbers only (the device is text)
        _save_samples(out / "samples" / f"iter{step}.jsonl", kept, tracker)
        data_key, rows = steps.trainset_stage(ctx, history)
        log.info("iteration %d: kept %d/%d samples (yield %.3f), %d/%d questions covered; training on %d",
                 step, y["kept"], y["sampled"], y["yield"], y["covered"], y["questions"], len(rows))
        merges = cfg.method.merges and merges_after(cfg.merge, t, cfg.run.iterations)
        last = step == cfg.run.iterations
        if not rows:
            log.warning("iteration %d kept no sample: the model is left unchanged this iteration", step)
            tracker.metrics({"sft/skipped": 1.0}, step)
            if every:
                previous, items = result.rows[-1][1], stage.last_items
            elif last:  # only the base was evaluated: the unchanged model is the job's last
                with stage("evaluate", step):
                    previous, items = evaluate(model)
            else:
                continue
            stage.record(f"SFT {step} (=)", "sft", step, previous, items, final=not merges)
            if merges:
                stage.record(f"Merge {step} (=)", "merged", step, previous, items, final=True)
            continue

        scales = None
        needs_importance = cfg.method.importance_scaled or (
            cfg.method.merges and get_rule(cfg.merge.name).per_layer_alpha and cfg.merge.alpha_schedule == "importance")
        if needs_importance or cfg.run.layer_analysis:
            with stage("importance", step):
                importance = steps.importance_stage(ctx, start, data_key, rows)
            scales = importance_scales(importance) if needs_importance else None
            tracker.metrics({f"importance/layer{n}": v for n, v in importance.items()}, step)
        with stage("sft", step):
            tuned, stats = steps.sft_stage(ctx, start, data_key, rows, t, base if schedule == "steps" else None)
        result.lineage.append({"stage": "sft", "step": step, "model": start.key, "out": tuned.key})
        tracker.metrics(_flat(stats, "sft/") | {"sft/rows": len(rows)}, step)
        if every or (last and not merges):
            with stage("evaluate", step):
                stage.record(f"SFT {step}", "sft", step, *evaluate(tuned), final=not merges)
        _link(out / f"sft{step}", tuned.path)
        if cfg.run.layer_analysis:  # Eq. 4: how far SFT moved each layer this iteration
            moved = weight_change(steps.local_dir(start.path), tuned.path)
            tracker.metrics({f"weight_change/layer{n}": v for n, v in moved.items()}, step)
        model = tuned  # vanilla & co. (star too) sample next from the SFT model; imm / iimm from the merged one

        if merges:
            with stage("merge", step):
                merged, ms = steps.merge_stage(ctx, base, prev, tuned, scales, t)
            result.lineage.append({"stage": "merge", "step": step, "model": prev.key, "sft": tuned.key,
                                   "out": merged.key})
            tracker.metrics({f"merge/{k}": v for k, v in _flat(ms).items()}, step)  # totals and per tensor group
            if every or last:
                with stage("evaluate", step):
                    stage.record(f"Merge {step}", "merged", step, *evaluate(merged), final=True)
            _link(out / f"merge{step}", merged.path)
            model = prev = merged
    tracker.metrics({"stages/executed": len(store.executed), "stages/reused": len(store.reused)}, cfg.run.iterations)
    write_jsonl(out / "lineage.jsonl", [{"stage": "base", "step": 0, "out": base.key}] + result.lineage)
    tracker.artifact(out / "lineage.jsonl")
    return result


def sft_start(method, base: steps.ModelRef, model: steps.ModelRef) -> steps.ModelRef:
    """The model an iteration's SFT fine-tunes: STaR restarts from the base model every iteration; the
    others continue from the model that sampled (the previous SFT or merged model)."""
    return base if method.restarts else model


def _evaluate(ctx: steps.Context, base: steps.ModelRef, stage: "_Stages", model: steps.ModelRef):
    """A tuned model's evaluation, with its KL to the base on held-out prompts (run.kl_prompts)."""
    metrics, items = steps.evaluate_stage(ctx, model)
    if ctx.cfg.run.kl_prompts:
        metrics = metrics | steps.divergence_stage(ctx, base, model, stage.base_items)
    return metrics, items


class _Stages:
    """Times stages (``with stage(name, step)``) and records evaluation rows in the result and MLflow,
    each with its Verified pass@1 and its per-item transitions from the base model (the first row
    recorded), raw and chance-corrected (``chance``: each test set's chance level).

    The model a method carries out of each round (merged for imm / iimm, else the SFT model; the base at
    step 0) also logs ``final/{id,ood,<set>}``: one name for every method, whose last step is the job's final
    model. They are the run's first metrics, so MLflow's compare view, which plots a run's first metric, opens
    on ``final/id``."""

    def __init__(self, result: Result, tracker: Tracker, groups: dict[str, list[str]], chance: dict[str, float],
                 folder: Path):
        self.result, self.tracker, self.groups, self.chance, self.folder = result, tracker, groups, chance, folder
        self.base_items: list[dict] | None = None
        self.last_items: list[dict] = []

    @contextmanager
    def __call__(self, name: str, step: int):
        start = time.perf_counter()
        yield
        took = time.perf_counter() - start
        self.result.seconds[name] = self.result.seconds.get(name, 0.0) + took

    def record(self, label: str, kind: str, step: int, metrics: dict[str, float], items: list[dict],
               final: bool = False) -> None:
        metrics = metrics | verified_pass1(items, self.groups)
        if self.base_items is None:
            self.base_items = items
        else:
            metrics = (metrics | transitions(self.base_items, items, self.groups)
                       | chance_corrected(self.base_items, items, self.chance, self.groups))
        self.last_items = items
        self.folder.mkdir(parents=True, exist_ok=True)  # per-item results by model, for paired statistics
        path = self.folder / f"{label.replace(' ', '')}.jsonl"
        write_jsonl(path, [{k: r[k] for k in ("set", "index", "right", "answered", "ended", "steps") if k in r} for r in items])
        self.tracker.artifact(path, "evaluations")  # the report's paired statistics read them from MLflow
        self.result.rows.append((label, metrics))
        headline = {f"final/{k}": metrics[k] for k in ("id", "ood", *self.result.sets) if final and k in metrics}
        self.tracker.metrics(headline | {f"eval/{kind}/{k}": v for k, v in metrics.items()}, step)
        log.info("%s: ID %.3f  OOD %.3f", label, metrics.get("id", float("nan")), metrics.get("ood", float("nan")))


def _save_samples(path: Path, kept: list[dict], tracker: Tracker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, kept)
    tracker.artifact(path, "samples")


def _link(link: Path, target: Path) -> None:
    """A readable name in the job folder (sft1, merge1, ...) for a checkpoint in the stage store."""
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve(), target_is_directory=True)


def _flat(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = v
    return out
