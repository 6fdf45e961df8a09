"""The typed configuration: each stage's dataclass, assembled into one root schema.

Schemas are registered in Hydra's ConfigStore (values live in ``conf/``), so a wrong type or an
unknown key fails while Hydra composes. Range checks live in each dataclass's ``__post_init__``
and run in ``validate``, before any compute; for a multirun, ``ValidateSweep`` composes and
validates every job of the grid before the launcher submits any.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from imm.data import DatasetConfig
from imm.evaluate import EvalConfig
from imm.sampling import ENGINE_KEYS, GenerateConfig
from imm.sampling.engine import EngineConfig
from imm.merge.rules import MergeConfig
from imm.methods import MethodConfig
from imm.models import ModelConfig, asset_path
from imm.plan.job import PlanConfig
from imm.sft.config import SFTConfig
from imm.store import StageConfig
from imm.tracking import TrackingConfig


@dataclass
class RunConfig:
    iterations: int = 3  # self-improvement iterations T
    seed: int = 0  # grid seed: tagged in MLflow; stage seeds default to it
    out_dir: str = ""  # this job's folder; empty = <outputs>/jobs/<job key> (found again on restart)
    layer_analysis: bool = False  # log layer importance (Eq. 3) and SFT weight change (Eq. 4) each iteration
    dry_run: bool = False  # validate and write the resolved config, then stop (checks a grid)
    # For rehearsals only: when a question keeps no sample, train on its gold solution (a random-weight
    # model keeps nothing, and SFT and merging must still run). Never set it for a real experiment.
    rehearsal_gold: bool = False
    kl_prompts: int = 32  # held-out prompts per test set for the KL to the base each round (imm.analysis.divergence); 0 = off
    evaluate: str = "all"  # all: the base and every SFT and merged model | final: the base and the job's last model only


    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"run.iterations={self.iterations} must be >= 1")
        if self.kl_prompts < 0:
            raise ValueError(f"run.kl_prompts={self.kl_prompts} must be >= 0")
        if self.evaluate not in ("all", "final"):
            raise ValueError(f"run.evaluate={self.evaluate!r} must be 'all' or 'final'")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: Optional[ModelConfig] = None  # distillation (paper §5.4): this model samples the training data
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)  # how sampling and evaluation run the model
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    stages: StageConfig = field(default_factory=StageConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)  # what the resource plan assumes (imm/plan/job.py)
    outputs: str = "outputs"  # root folder: run folders, the MLflow store, caches
    prompt: str = "Question: {question}\nAnswer: Let's think step by step."  # must contain {question}

    def __post_init__(self) -> None:
        if "{question}" not in self.prompt:
            raise ValueError("prompt must contain '{question}'")
        # generate.backend & co. are the former names of engine.*: move them, so one place holds each
        self.engine = self.engine.given(self.generate.engine_overrides())
        for name in ENGINE_KEYS:
            setattr(self.generate, name, None)
        self._check_schedule()
        self._check_precision()

    def _check_precision(self) -> None:
        """float16 on DeepSpeed needs the JSON's fp16 section: without it the Trainer's fp16 flag finds no
        section to fill and DeepSpeed trains in fp32 without a word."""
        s = self.sft
        if s.backend != "trl" or not s.deepspeed or self.model.dtype != "float16":
            return
        path = Path(s.deepspeed) if Path(s.deepspeed).exists() else Path(__file__).resolve().parents[1] / s.deepspeed
        if path.is_file() and "fp16" not in json.loads(path.read_text()):
            raise ValueError(f"model.dtype=float16 with sft.deepspeed={s.deepspeed}: that DeepSpeed config has no "
                             f"fp16 section, so SFT would run in fp32; use model.dtype=bfloat16 (what ZeRO-3 "
                             f"here is set up for) or add \"fp16\": {{\"enabled\": \"auto\"}} to the JSON")

    def _check_schedule(self) -> None:
        """merge.schedule other than round: a merging method, and for steps the torch trainer."""
        schedule = self.merge.schedule
        if schedule != "round" and not self.method.merges:
            raise ValueError(f"merge.schedule={schedule} needs a merging method (method=imm), not {self.method.name}")
        if schedule == "steps" and (self.sft.backend != "torch" or self.method.importance_scaled):
            raise ValueError("merge.schedule=steps pulls inside the torch SFT loop: it needs sft.backend=torch "
                             "and a method without importance scales (imm)")


def register() -> None:
    if not OmegaConf.has_resolver("imm.asset"):
        OmegaConf.register_new_resolver("imm.asset", asset_path)
    ConfigStore.instance().store(name="schema", node=Config)


def unknown_keys(node: DictConfig, path: str = "") -> list[str]:
    """Keys a typed node does not declare (``+merge.alhpa=0.5`` slips past Hydra's struct mode)."""
    out = []
    kind = OmegaConf.get_type(node)
    declared = {f.name for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) else None
    for key in node.keys():
        full = f"{path}{key}"
        if declared is not None and key not in declared:
            out.append(full)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            out += unknown_keys(child, full + ".")
    return out


def validate(cfg: DictConfig) -> Config:
    """The config as typed objects; raises naming the field on a bad value or missing file."""
    extra = unknown_keys(cfg)
    if extra:
        raise ValueError(f"unknown config keys: {', '.join(extra)}")
    return OmegaConf.to_object(cfg)


register()
