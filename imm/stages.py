"""The loop's stages, each a function over the stage store: find the output by key, else compute it.

A model is passed around as a ``ModelRef`` (its key and folder); ``Context.load`` keeps the last
model in memory so consecutive stages of one job do not reload it from disk.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

from imm import sampling as generate

from imm import methods

from imm import sft
from imm.config import Config
from imm.data import Data
from imm.data.prompts import EXEMPLARS, PAPER_EXEMPLARS
from imm.evaluate import evaluate
from imm.grading.filtering import keep_correct
from imm.analysis.divergence import held_out, response_kl
from imm.analysis.diversity import answer_diversity, answer_key
from imm.analysis.importance import layer_importance
from imm.analysis.mechanism import kept_forms
from imm.analysis.reasoning import kept_shares, kept_step_classes
from imm.merge.engine import merge_checkpoints
from imm.merge.schedule import StepPull
from imm.models import ModelConfig, device_kind, load_model, resolve_device
from imm.sampling.engine import decoding_plan
from imm.sampling.slots import packs
from imm.sampling import ENGINE_KEYS, ending_shares
from imm.grading.answers import trails_answer
from imm.store import StageStore, digest, read_json, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    key: str
    path: Path
    teacher: bool = False  # loaded with the teacher's config and tokenizer


@dataclass
class Context:
    cfg: Config
    store: StageStore
    data: Data
    tok: object
    teacher_tok: object = None
    _key: str | None = None  # the model held in memory
    _model: object = None

    def prompt(self, question: str) -> str:
        """The training prompt (SFT, importance): the configured template."""
        return self.cfg.prompt.format(question=question)

    def item_prompt(self, item: dict) -> str:
        """The sampling / evaluation prompt: the item's own (few-shot benchmarks) or the template."""
        return item.get("prompt") or self.prompt(item["question"])

    def load(self, ref: ModelRef):
        if self._key != ref.key:
            cfg = self.cfg.teacher if ref.teacher else self.cfg.model
            self._model, self._key = load_model(cfg, str(ref.path)), ref.key
        return self._model

    def take(self, ref: ModelRef):
        """The model, loaded if needed, for a caller that changes it in place (its key is forgotten)."""
        model = self.load(ref)
        self._key = None
        return model

    def hold(self, ref: ModelRef, model) -> None:
        self._model, self._key = model, ref.key

    def release(self) -> None:
        """Hand the GPU over (to a vLLM engine): drop the model held here and empty the allocator's
        cache, or the engine finds less free memory than engine.gpu_memory_utilization asks and refuses."""
        self._model, self._key = None, None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def base_ref(model: ModelConfig, teacher: bool = False) -> ModelRef:
    """A pretrained model's identity, from its content (not its path): the config and a sample of
    each weight file's bytes, so a copy elsewhere reuses the same stages and a changed file does not."""
    path = Path(model.path)
    if not path.is_dir():  # a hub id names one revision's content already
        return ModelRef(digest({"hub": model.path, "dtype": model.dtype}), path, teacher)
    files = []
    for f in sorted(path.glob("*.safetensors")):
        files.append((f.name, f.stat().st_size, _sample_hash(f)))
    config = (path / "config.json").read_text() if (path / "config.json").exists() else ""
    return ModelRef(digest({"config": config, "dtype": model.dtype, "files": files}), path, teacher)


def _sample_hash(path: Path, chunks: int = 16, size: int = 1 << 16) -> str:
    """SHA-256 of ``chunks`` evenly spaced blocks of a file (cheap for multi-GB checkpoints)."""
    h, total = hashlib.sha256(), path.stat().st_size
    with open(path, "rb") as f:
        for i in range(chunks):
            f.seek(max(0, (total - size) * i // max(1, chunks - 1)))
            h.update(f.read(size))
    return h.hexdigest()


def data_key(cfg: Config, split: str) -> str:
    """The items a stage reads: the dataset settings and prompts, and for benchmarks the few-shot
    exemplars (their text is in every sampling and evaluation prompt)."""
    d = asdict(cfg.dataset)
    d.pop("n_test" if split == "train" else "n_train")
    if split == "train" or d.get("eval_split") == "test":
        d.pop("eval_split", None)  # the training questions never depend on it; test keeps its old keys
    if not d.get("exemplars"):
        d.pop("exemplars", None)  # each benchmark's own exemplars: the keys they always had
    for files in (d.get("files") or {}).values():
        if files.get("validation") is None:
            files.pop("validation", None)
    shots = {"exemplars": digest(PAPER_EXEMPLARS)} if cfg.dataset.kind == "benchmarks" else {}
    if cfg.dataset.kind == "benchmarks" and cfg.dataset.exemplars:
        shots["own"] = digest(EXEMPLARS[cfg.dataset.exemplars])
    return digest({"dataset": d, "split": split, "prompt": cfg.prompt, **shots})


# What each stage's key holds: every setting that changes its output, none that only changes speed.
# The device enters as its kind (cpu / cuda / mps: other kernels, other rounding), not its index.

def numerics(model: ModelConfig) -> dict:
    """How the model's arithmetic runs: its dtype and the kind of device."""
    return {"dtype": model.dtype, "device": device_kind(model.device)}


def decoding(cfg: Config, model: ModelConfig, sampled: bool) -> dict:
    """The engine settings that change decoded text. hf: the compiled path draws its numbers another
    way, and a sampled run splits one random stream by batch, so the batch size matters there (0 =
    auto, sized from memory); greedy text does not depend on the batch. vllm: the engine's own
    batching and tensor parallelism leave the requests' seeded draws as they are."""
    e = cfg.engine
    if e.backend == "vllm":
        return {"backend": "vllm", "dtype": model.dtype}
    plan = decoding_of(model)
    # the slots decoder names itself and its dtype; the hf decoder's keys stay as they were before it
    slots = {"decoder": plan["decoder"], "compute_dtype": plan["dtype"]} if plan["decoder"] != "hf" else {}
    return {"backend": "hf", "compile": e.compile, **numerics(model)} | slots | \
        ({"batch_size": e.batch_size} if sampled else {})


def decoding_of(model: ModelConfig) -> dict:
    """The decoder and compute dtype sampling and evaluation use for ``model`` on its device (``auto``
    decided from the model folder's config.json: slots where imm.sampling.slots packs the architecture)."""
    plan = decoding_plan(model.decoder, model.compute_dtype, model.dtype, resolve_device(model.device))
    if plan["decoder"] == "auto":
        config = Path(model.path) / "config.json"
        fields = json.loads(config.read_text()) if config.is_file() else {}
        plan["decoder"] = "slots" if packs(SimpleNamespace(**fields)) else "hf"
        if plan["decoder"] == "hf":
            plan["dtype"] = model.dtype
    return plan


def evaluate_fields(cfg: Config, model: ModelRef) -> dict:
    ev = asdict(cfg.eval)
    if ev["temperature"] == 0 or cfg.engine.backend == "vllm":
        ev.pop("batch_size")  # greedy: speed only; vllm: not used
    model_cfg = cfg.teacher if model.teacher else cfg.model
    # engine.batch_size is the sampling stage's; evaluation's own (eval.batch_size) is in ``ev`` when it counts
    engine = decoding(cfg, model_cfg, False)
    if cfg.engine.backend == "vllm" and cfg.eval.temperature > 0:
        engine["one_call"] = True  # every test set in one call: the requests' seeds follow from the order
    return {"model": model.key, "eval": ev, "tests": data_key(cfg, "test"), "engine": engine}


def synthesize_fields(cfg: Config, model: ModelRef, t: int) -> dict:
    g = {k: v for k, v in asdict(cfg.generate).items() if k not in ENGINE_KEYS}  # moved to engine
    model_cfg = cfg.teacher if model.teacher else cfg.model
    return {"model": model.key, "generate": g, "iteration": t, "train": data_key(cfg, "train"),
            "engine": decoding(cfg, model_cfg, sampled=any(x > 0 for x in cfg.generate.temperatures)),
            **({"rehearsal_gold": True} if cfg.run.rehearsal_gold else {}),  # only then: other keys unchanged
            **({"keep": "exact"} if cfg.method.keep == "exact" else {})}


def importance_fields(cfg: Config, model: ModelRef, data: str) -> dict:
    return {"model": model.key, "data": data, **numerics(cfg.model)}


def sft_arithmetic(model: ModelConfig) -> str:
    """The dtype SFT computes in for ``model`` on its device (imm.sft.arithmetic)."""
    return sft.arithmetic(model.dtype, model.compute_dtype, model.device)


def sft_fields(cfg: Config, model: ModelRef, data: str, t: int, pull_to: ModelRef | None = None) -> dict:
    """The SFT settings, the storage dtype (bf16/fp16: mixed precision), the device kind and the global
    batch it comes to (on trl, the number of GPUs sets it unless sft.global_batch fixes it); with
    ``pull_to`` (merge.schedule=steps) the model pulled toward and the pull's rule (only then:
    every other SFT keeps its key)."""
    pull = {"pull": {"to": pull_to.key, "merge": cfg.merge.key_fields(), "every": cfg.merge.every,
                     "beta": cfg.merge.beta}} if pull_to else {}
    settings = asdict(cfg.sft)
    if settings["scheduler"] == "linear":  # the decay every SFT had before there was a choice: keys unchanged
        settings.pop("scheduler")
    compute = sft_arithmetic(cfg.model)  # named only where it differs from the storage dtype: other keys unchanged
    return {"model": model.key, "data": data, "sft": settings, "iteration": t, **numerics(cfg.model),
            "global_batch": sft.global_batch(cfg.sft, cfg.model.device)} | pull | \
        ({"compute_dtype": compute} if compute != cfg.model.dtype else {})


def merge_fields(cfg: Config, base: ModelRef, prev: ModelRef, tuned: ModelRef, scales: dict[int, float] | None,
                 t: int) -> dict:
    """Merged on the CPU, tensor by tensor from the files: no device or engine setting enters, and of
    merge.* only what changes the merged weights (``MergeConfig.key_fields``)."""
    return {"base": base.key, "prev": prev.key, "sft": tuned.key, "merge": cfg.merge.key_fields(), "iteration": t,
            "scales": scales}


def evaluate_stage(ctx: Context, model: ModelRef) -> tuple[dict[str, float], list[dict]]:
    """The model's metrics and its per-item results (which items it got right, their text and, on the
    testbed, step classes: imm/analysis/reasoning.py), kept in the stage folder as items.jsonl."""
    key = ctx.store.key("evaluate", **evaluate_fields(ctx.cfg, model))

    def compute(tmp: Path) -> None:
        engine, items = ctx.cfg.engine, []
        if engine.backend == "vllm":
            from imm.sampling.vllm import complete_vllm

            folder, dtype = str(local_dir(model.path)), _model_cfg(ctx, model).dtype
            replicas, tp = vllm_engines(ctx.cfg, folder, dtype)
            log.info("evaluate on vllm (%d engines x %d GPUs)", replicas, tp)
            ctx.release()
            run = functools.partial(complete_vllm, folder, dtype=dtype, tensor_parallel_size=tp, replicas=replicas,
                                    gpu_memory_utilization=engine.gpu_memory_utilization)
            metrics = evaluate(None, ctx.tok, ctx.data, ctx.item_prompt, ctx.cfg.eval, complete_fn=run, records=items)
        else:
            net = ctx.load(model)
            log.info("evaluate on %s", net.device)
            metrics = evaluate(net, ctx.tok, ctx.data, ctx.item_prompt, ctx.cfg.eval, compile=engine.compile,
                               records=items, decoding=decoding_of(_model_cfg(ctx, model)))
        write_json(tmp / "metrics.json", metrics)
        write_jsonl(tmp / "items.jsonl", items)

    path, _ = ctx.store.get_or_compute("evaluate", key, compute, files=("metrics.json", "items.jsonl"))
    return read_json(path / "metrics.json"), read_jsonl(path / "items.jsonl")


def synthesize_stage(ctx: Context, model: ModelRef, t: int) -> tuple[str, list[dict], dict]:
    """Sample k solutions per training question and keep the correct ones: (key, kept rows, yield).

    On the testbed each kept row carries its step class (``steps``) and the yield the shares of sound,
    shortcut and flawed reasoning among the kept samples (imm/analysis/reasoning.py)."""
    gold = ctx.cfg.run.rehearsal_gold
    key = ctx.store.key("synthesize", **synthesize_fields(ctx.cfg, model, t))

    def compute(tmp: Path) -> None:
        prompts = [ctx.item_prompt(item) for item in ctx.data.train]
        engine, decoded = ctx.cfg.engine, {}  # decoded: the hf backend's figures (vllm: none)
        if engine.backend == "vllm":
            from imm.sampling.vllm import synthesize_vllm

            folder, dtype = str(local_dir(model.path)), _model_cfg(ctx, model).dtype
            replicas, tp = vllm_engines(ctx.cfg, folder, dtype)
            device = f"vllm ({replicas} engines x {tp} GPUs)"
            log.info("synthesize on %s", device)
            ctx.release()
            samples = synthesize_vllm(folder, prompts, ctx.cfg.generate, t, tensor_parallel_size=tp, dtype=dtype,
                                      gpu_memory_utilization=engine.gpu_memory_utilization, replicas=replicas)
        else:
            tok = ctx.teacher_tok if model.teacher else ctx.tok
            net = ctx.load(model)
            device = str(net.device)
            log.info("synthesize on %s", device)
            samples = generate.synthesize(net, tok, prompts, ctx.cfg.generate, t, engine, stats=decoded,
                                          decoding=decoding_of(_model_cfg(ctx, model)))
        kept, y = keep_correct(ctx.data.train, samples, t, exact=ctx.cfg.method.keep == "exact")
        spread = answer_diversity([[answer_key(s["text"]) for s in group] for group in samples])
        classes = kept_step_classes(kept, ctx.data.train)  # before the gold rows: they are not the model's
        for row, c in zip(kept, classes):
            if c is not None:
                row["steps"] = c
        extra = methods.gold_fallback(ctx.data.train, kept, t) if gold else []  # the yield stays the model's
        endings = [s["ending"] for group in samples for s in group if "ending" in s]
        write_jsonl(tmp / "kept.jsonl", kept + extra)
        write_json(tmp / "yield.json", {"sampled": y.sampled, "kept": y.kept, "questions": y.questions,
                                        "covered": y.covered, "yield": y.rate, "coverage": y.coverage,
                                        "no_answer": y.no_answer, "timeouts": y.timeouts, "device": device,
                                        "new_tokens": decoded.get("new_tokens")}
                   | ending_shares(endings) | kept_text(kept)
                   | kept_shares(classes) | kept_forms(kept, ctx.data.train) | spread
                   | ({"gold_rows": len(extra)} if gold else {}))

    path, _ = ctx.store.get_or_compute("synthesize", key, compute, files=("kept.jsonl", "yield.json"))
    return key, read_jsonl(path / "kept.jsonl"), read_json(path / "yield.json")


def divergence_stage(ctx: Context, base: ModelRef, model: ModelRef, base_items: list[dict]) -> dict[str, float]:
    """``<group>/kl_forward`` KL(π_base‖π) and ``<group>/kl_reverse`` KL(π‖π_base) per response token
    (imm.analysis.divergence) on the first run.kl_prompts items of each of the group's test sets,
    answered as the base model answered them."""
    n, cfg = ctx.cfg.run.kl_prompts, ctx.cfg
    answers = ctx.store.key("evaluate", **evaluate_fields(cfg, base))  # the responses: the base's answers
    key = ctx.store.key("divergence", base=base.key, model=model.key, answers=answers, n=n, **numerics(cfg.model))

    def compute(tmp: Path) -> None:
        base_net = load_model(cfg.model, str(local_dir(base.path)))
        net = ctx.load(model)
        log.info("divergence from the base on %s", net.device)
        out = {}
        for group, sets in (("id", ctx.data.id_sets), ("ood", ctx.data.ood_sets)):
            prompts, responses = held_out(ctx.data.tests, base_items, sets, n, ctx.item_prompt)
            if prompts:
                kl = response_kl(base_net, net, ctx.tok, prompts, responses)
                out |= {f"{group}/kl_forward": kl["forward"], f"{group}/kl_reverse": kl["reverse"]}
        write_json(tmp / "kl.json", out)

    path, _ = ctx.store.get_or_compute("divergence", key, compute, files=("kl.json",))
    return read_json(path / "kl.json")


def kept_text(kept: list[dict]) -> dict[str, float]:
    """The kept samples' text: the share that goes on after its final-answer statement (``kept_trailing``:
    what SFT would teach the model to write after answering) and their mean length in tokens."""
    if not kept:
        return {}
    out = {"kept_trailing": sum(trails_answer(r["response"]) for r in kept) / len(kept)}
    tokens = [r["tokens"] for r in kept if "tokens" in r]
    return out | ({"kept_tokens": sum(tokens) / len(tokens)} if tokens else {})


def trainset_fields(rows: list[dict]) -> dict:
    """A training set is its rows: methods that build the same rows (vanilla, mixture and accumulation at
    iteration 1) share the key, and so the SFT and evaluation stages that follow."""
    return {"rows": digest(rows)}


def trainset_stage(ctx: Context, history: list[list[dict]]) -> tuple[str, list[dict]]:
    """The iteration's training rows, from every iteration's kept samples (oldest first), and their key."""
    rows = methods.build_trainset(ctx.cfg.method, history, ctx.cfg.run.seed)  # CPU, exact, cheap
    key = ctx.store.key("trainset", **trainset_fields(rows))

    def compute(tmp: Path) -> None:
        write_jsonl(tmp / "rows.jsonl", rows)

    path, _ = ctx.store.get_or_compute("trainset", key, compute, files=("rows.jsonl",))
    return key, read_jsonl(path / "rows.jsonl")


def importance_stage(ctx: Context, model: ModelRef, data: str, rows: list[dict]) -> dict[int, float]:
    key = ctx.store.key("importance", **importance_fields(ctx.cfg, model, data))

    def compute(tmp: Path) -> None:
        net = ctx.load(model)
        log.info("importance on %s", net.device)
        write_json(tmp / "importance.json", layer_importance(net, ctx.tok, rows, ctx.prompt))

    path, _ = ctx.store.get_or_compute("importance", key, compute, files=("importance.json",))
    return {int(k): v for k, v in read_json(path / "importance.json").items()}


def sft_stage(ctx: Context, model: ModelRef, data: str, rows: list[dict], t: int,
              pull_to: ModelRef | None = None) -> tuple[ModelRef, dict]:
    """SFT of ``model`` on ``rows``; with ``pull_to``, pulled toward it every merge.every steps
    (merge.schedule=steps: imm.merge.schedule)."""
    key = ctx.store.key("sft", **sft_fields(ctx.cfg, model, data, t, pull_to))

    def compute(tmp: Path):
        pull = StepPull(ctx.cfg.merge, local_dir(pull_to.path), t) if pull_to else None
        net, stats = sft.fine_tune(lambda: ctx.take(model), local_dir(model.path), ctx.tok, rows, ctx.prompt,
                                   ctx.cfg.sft, t, tmp, ctx.cfg.model.dtype, ctx.cfg.model.device, on_step=pull,
                                   compute=sft_arithmetic(ctx.cfg.model))
        stats |= pull.stats() if pull else {}
        log.info("sft on %s (global batch %d)", stats["device"], stats["global_batch"])
        write_json(tmp / "stats.json", stats)
        return net

    path, net = ctx.store.get_or_compute("sft", key, compute, files=("stats.json", "model/config.json"))
    ref = ModelRef(key, path / "model")
    if net is not None:
        ctx.hold(ref, net)
    return ref, read_json(path / "stats.json")


def merge_stage(ctx: Context, base: ModelRef, prev: ModelRef, tuned: ModelRef, scales: dict[int, float] | None,
                t: int) -> tuple[ModelRef, dict]:
    """θ_m = α·θ + (1−α)·(θ_prev + [scale·]DARE(θ_sft − θ_prev)), streamed over the safetensors files."""
    key = ctx.store.key("merge", **merge_fields(ctx.cfg, base, prev, tuned, scales, t))

    def compute(tmp: Path) -> None:
        log.info("merge on cpu (streamed tensor by tensor)")
        stats = merge_checkpoints(local_dir(base.path), local_dir(prev.path), tuned.path, tmp / "model",
                                  ctx.cfg.merge, t, scales)
        write_json(tmp / "stats.json", asdict(stats))

    path, _ = ctx.store.get_or_compute("merge", key, compute, files=("stats.json", "model/config.json"))
    return ModelRef(key, path / "model"), read_json(path / "stats.json")


def local_dir(path: Path) -> Path:
    """A checkpoint folder on disk; a hub id is fetched into the local cache first."""
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))


def vllm_engines(cfg: Config, folder: str, dtype: str) -> tuple[int, int]:
    """(engines, GPUs per engine) for a vLLM stage on this process's GPUs, as the plan chose them."""
    from imm.plan.job import context_tokens
    from imm.sampling.vllm import engines_for

    return engines_for(folder, dtype, cfg.engine, context_tokens(cfg), cfg.plan.min_sequences, cfg.plan.overhead_gb)


def _model_cfg(ctx: Context, ref: ModelRef) -> ModelConfig:
    return ctx.cfg.teacher if ref.teacher else ctx.cfg.model
