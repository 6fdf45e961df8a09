"""The SFT stage: fine-tune on kept samples with the loss on the response only.

Which trainer runs is decided here and nowhere else (``fine_tune``):

- ``sft.backend=torch``: :mod:`imm.sft.torch_loop`, one process, length-grouped batches;
- ``sft.backend=trl``: :mod:`imm.sft.trl_trainer` (TRL ``SFTTrainer``, DeepSpeed ZeRO-3), in this
  process on one GPU or CPU, or one process per GPU through torchrun when several are visible or
  DeepSpeed is on (torchrun sets RANK, WORLD_SIZE and MASTER_ADDR; without them DeepSpeed looks for MPI).

The SFT interventions of the paper's Table 5 live in :mod:`imm.sft.interventions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from imm.models import DTYPES
from imm.sft.config import SFTConfig
from imm.sft.torch_loop import IGNORE, batches, collate, encode

__all__ = ["IGNORE", "SFTConfig", "arithmetic", "batches", "collate", "encode", "fine_tune", "global_batch", "processes", "train"]


def train(model, tok, rows: list[dict], prompt_fn, cfg: SFTConfig, iteration: int,
          amp: str | None = None, on_step=None) -> dict:
    """Fine-tune ``model`` in place, in this process, with the configured trainer; returns its stats.

    ``amp``: bfloat16 | float16 computes under autocast in that dtype (the model's weights, the master
    copy, are left in their own dtype: fp32 for mixed precision); None computes in the weights' dtype.
    ``on_step``: a hook after each optimizer step (torch trainer only; imm.merge.schedule)."""
    if on_step is not None and cfg.backend != "torch":
        raise ValueError("a hook after each optimizer step (merge.schedule=steps) needs sft.backend=torch")
    if cfg.backend == "trl":
        from imm.sft.trl_trainer import train_trl

        return train_trl(model, tok, rows, prompt_fn, cfg, iteration, deepspeed=cfg.deepspeed,
                         bf16=amp == "bfloat16", fp16=amp == "float16")
    import torch

    from imm.sft.torch_loop import train as train_torch

    return train_torch(model, tok, rows, prompt_fn, cfg, iteration, amp=getattr(torch, amp) if amp else None,
                       on_step=on_step)


def arithmetic(storage: str, compute: str, device: str) -> str:
    """The dtype SFT computes in: a bf16/fp16 storage dtype trains in it (mixed precision, as always);
    float32 weights train in ``compute`` (model.compute_dtype), where ``auto`` is bfloat16 on hardware
    with fast bf16 (imm.sampling.engine.fast_bf16) and float32 elsewhere. bf16 keeps float32 master
    weights, rounded stochastically into the bf16 compute weights (imm/sft/precision.py), and the
    checkpoint is still written in ``storage``."""
    if storage != "float32" or compute == "float32":
        return storage
    if compute == "bfloat16":
        return compute
    from imm.models import resolve_device
    from imm.sampling.engine import fast_bf16

    return "bfloat16" if fast_bf16(resolve_device(device)) else "float32"


def fine_tune(load: Callable[[], object], model_dir: Path, tok, rows: list[dict], prompt_fn, cfg: SFTConfig,
              iteration: int, out: Path, dtype: str, device: str = "auto", on_step=None,
              compute: str | None = None) -> tuple[object | None, dict]:
    """Train and write the model to ``out`` in ``dtype``; returns (the trained model if it is in this
    process, stats).

    ``load`` gives the model to train in place; it is not called when training runs in other
    processes (trl on several GPUs: rank 0 writes the model itself). A bf16/fp16 ``dtype`` trains
    in mixed precision: fp32 master weights, autocast compute, the checkpoint stored in ``dtype``.
    ``device`` auto or cuda (no index) lets trl spread over every visible GPU; cuda:N keeps one.
    ``on_step``: see ``train``. ``compute``: the dtype to train in (``arithmetic``); None = ``dtype``."""
    gpus = processes(cfg, device)
    if gpus > 1 or (cfg.backend == "trl" and cfg.deepspeed):  # DeepSpeed on one GPU too: a launcher's environment
        from imm.sft.trl_trainer import launch

        cfg.accumulation(gpus)  # a global batch that does not split over the GPUs fails before the launch
        stats = launch(str(model_dir), rows, prompt_fn, cfg, iteration, str(out), nproc=gpus,
                       deepspeed=cfg.deepspeed, dtype=dtype)
        tok.save_pretrained(out / "model")
        return None, stats
    model = master_weights(load())
    compute = compute or dtype
    stats = train(model, tok, rows, prompt_fn, cfg, iteration, amp=None if compute == "float32" else compute,
                  on_step=on_step) | {"compute_dtype": compute}
    model.to(DTYPES[dtype]).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return model, stats


def master_weights(model):
    """The model in fp32, in place (a no-op for an fp32 model): the optimizer updates these weights."""
    import torch

    return model.to(torch.float32)


def processes(cfg: SFTConfig, device: str) -> int:
    """Trainer processes SFT runs in: one per visible GPU for trl on ``auto``/``cuda``, else one."""
    if cfg.backend != "trl" or device not in ("auto", "cuda"):
        return 1
    import torch

    return max(1, torch.cuda.device_count())


def global_batch(cfg: SFTConfig, device: str) -> int:
    """Sequences per optimizer step over all processes (what changes the result, not how it is split)."""
    n = processes(cfg, device)
    return cfg.batch_size * cfg.accumulation(n) * n
