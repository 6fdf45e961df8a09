"""The SFT stage: fine-tune on kept samples with the loss on the response only.

Which trainer runs is decided here and nowhere else (``fine_tune``):

- ``sft.backend=torch``: :mod:`imm.sft.torch_loop`, one process, length-grouped batches;
- ``sft.backend=trl``: :mod:`imm.sft.trl_trainer` (TRL ``SFTTrainer``, DeepSpeed ZeRO-3), in this
  process on one GPU or CPU, or one process per GPU through torchrun when several are visible.

The SFT interventions of the paper's Table 5 live in :mod:`imm.sft.interventions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from imm.sft.config import SFTConfig
from imm.sft.torch_loop import IGNORE, batches, collate, encode

__all__ = ["IGNORE", "SFTConfig", "batches", "collate", "encode", "fine_tune", "train"]


def train(model, tok, rows: list[dict], prompt_fn, cfg: SFTConfig, iteration: int) -> dict:
    """Fine-tune ``model`` in place, in this process, with the configured trainer; returns its stats."""
    if cfg.backend == "trl":
        import torch

        from imm.sft.trl_trainer import train_trl

        return train_trl(model, tok, rows, prompt_fn, cfg, iteration, deepspeed=cfg.deepspeed,
                         bf16=next(model.parameters()).dtype == torch.bfloat16)
    from imm.sft.torch_loop import train as train_torch

    return train_torch(model, tok, rows, prompt_fn, cfg, iteration)


def fine_tune(load: Callable[[], object], model_dir: Path, tok, rows: list[dict], prompt_fn, cfg: SFTConfig,
              iteration: int, out: Path, dtype: str) -> tuple[object | None, dict]:
    """Train and write the model to ``out``; returns (the trained model if it is in this process, stats).

    ``load`` gives the model to train in place; it is not called when training runs in other
    processes (trl on several GPUs: rank 0 writes the model itself)."""
    gpus = _gpus()
    if cfg.backend == "trl" and gpus > 1:
        from imm.sft.trl_trainer import launch

        stats = launch(str(model_dir), rows, prompt_fn, cfg, iteration, str(out), nproc=gpus,
                       deepspeed=cfg.deepspeed, dtype=dtype)
        tok.save_pretrained(out / "model")
        return None, stats
    model = load()
    stats = train(model, tok, rows, prompt_fn, cfg, iteration)
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return model, stats


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()
