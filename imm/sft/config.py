"""The SFT stage's settings, shared by both trainers (imm.sft.torch_loop, imm.sft.trl_trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from imm.sft.interventions import PAPER_VALUES

SCHEDULERS = ("linear", "cosine")  # transformers' get_{name}_schedule_with_warmup, lr_scheduler_type={name}


@dataclass
class SFTConfig:
    epochs: int = 6  # passes over the iteration's training set (paper: 3 at LLM scale)
    lr: float = 1e-3  # peak learning rate (paper: 2e-5 at LLM scale)
    batch_size: int = 16  # sequences per optimizer micro-batch (paper: 4 per device)
    grad_accum: int = 1  # micro-batches per optimizer step; derived instead when global_batch is set
    global_batch: int = 0  # sequences per optimizer step over all processes (paper: 128); 0 = batch_size × grad_accum × processes
    warmup_ratio: float = 0.03  # share of steps with linear warm-up (paper: 0.03)
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables
    seed: int = 0  # batch order seed (combined with the iteration)
    backend: str = "torch"  # torch: the loop below, one process | trl: TRL SFTTrainer (bf16, DeepSpeed, multi-GPU)
    intervention: str = "none"  # none | grad_decay | grad_clip | weight_mask (paper Table 5; imm/sft/interventions.py)
    intervention_value: float = 0.0  # γ, max norm or top-p of the intervention; 0 = the paper's (0.9, 2.0, 0.3)
    deepspeed: Optional[str] = None  # trl only: a DeepSpeed JSON (conf/deepspeed/zero3.json); None = no DeepSpeed
    scheduler: str = "linear"  # learning-rate decay after warm-up: linear (the paper) | cosine (its released code)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("sft.epochs, sft.batch_size and sft.grad_accum must be >= 1")
        if self.global_batch < 0 or self.global_batch % self.batch_size:
            raise ValueError(f"sft.global_batch={self.global_batch} must be a multiple of sft.batch_size={self.batch_size}")
        if self.global_batch and self.grad_accum != 1:
            raise ValueError("set sft.global_batch or sft.grad_accum, not both (the accumulation follows from the global batch)")
        if not self.lr > 0:
            raise ValueError(f"sft.lr={self.lr} must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"sft.warmup_ratio={self.warmup_ratio} must lie in [0, 1)")
        if self.backend not in ("torch", "trl"):
            raise ValueError(f"sft.backend={self.backend!r} is not one of ('torch', 'trl')")
        if self.intervention not in PAPER_VALUES:
            raise ValueError(f"sft.intervention={self.intervention!r} is not one of {sorted(PAPER_VALUES)}")
        if self.intervention != "none" and self.backend != "torch":
            raise ValueError("sft.intervention needs sft.backend=torch")
        if self.intervention == "weight_mask" and not 0 <= self.intervention_value < 1:
            raise ValueError(f"sft.intervention_value={self.intervention_value} must lie in [0, 1) for weight_mask")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"sft.scheduler={self.scheduler!r} is not one of {SCHEDULERS}")
        if self.deepspeed and self.backend != "trl":
            raise ValueError("sft.deepspeed needs sft.backend=trl")

    def accumulation(self, processes: int = 1) -> int:
        """Micro-batches per optimizer step when ``processes`` trainers each take ``batch_size`` sequences."""
        if not self.global_batch:
            return self.grad_accum
        per_pass = self.batch_size * processes
        if self.global_batch % per_pass:
            raise ValueError(f"sft.global_batch={self.global_batch} is not a multiple of sft.batch_size × processes "
                             f"= {self.batch_size} × {processes}")
        return self.global_batch // per_pass
