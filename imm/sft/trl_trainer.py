"""SFT through TRL's ``SFTTrainer`` (the ``trl`` backend): bf16 and DeepSpeed ZeRO-3, one GPU or many.

Same contract as ``imm.sft.torch_loop.train``: fine-tune ``model`` in place on rows {question, response} with
the loss on the response tokens only, return {"loss", "first_loss", "steps", "tokens_per_s",
"pad_share"}, raise FloatingPointError on a NaN/inf loss. The rows become a prompt-completion
dataset (prompt = prompt_fn(question), completion = response as the model wrote it + EOS, as
``imm.sft.torch_loop.encode`` builds them), so TRL's ``completion_only_loss`` masks the prompt. Hyperparameters come from
``imm.sft.config.SFTConfig`` alone; the DeepSpeed JSON leaves them "auto" and the Trainer fills them in.

In the loop's process: ``train_trl(model, tok, rows, prompt_fn, cfg, t, deepspeed=..., bf16=...)``.
On several GPUs the training runs in its own processes, one per GPU, while the loop stays a single
process: ``launch(model_dir, rows, prompt_fn, cfg, t, out_dir, nproc=8, deepspeed=...)`` writes the
rows, runs

    python -m torch.distributed.run --standalone --nproc_per_node 8 -m imm.sft.trl_trainer \
        --model DIR --rows OUT/rows.jsonl --sft OUT/sft.json --out OUT --deepspeed conf/deepspeed/zero3.json

and rank 0 saves the trained model to OUT/model and the stats to OUT/stats.json.

    python -m pytest tests/integration/test_sft_backends.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback

from imm.sft.config import SFTConfig


class FiniteLoss(TrainerCallback):
    """TrainerCallback: stop the run with FloatingPointError as soon as a logged loss is NaN/inf.

    The Trainer logs every optimizer step (logging_steps=1) and its NaN filter is off, so a bad
    step surfaces in the next log instead of being averaged away.
    """

    def __init__(self, iteration: int):
        self.iteration = iteration
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if not math.isfinite(loss):
            raise FloatingPointError(f"SFT loss became {loss} at iteration {self.iteration}, optimizer step "
                                     f"{state.global_step} (trl backend): lower sft.lr or check the data")
        self.losses.append(float(loss))


class CountingCollator:
    """Wraps the Trainer's collator to count real and padded tokens (for tokens/s and pad share)."""

    def __init__(self, collate):
        self.collate, self.tokens, self.padded = collate, 0, 0

    def __call__(self, examples):
        batch = self.collate(examples)
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.padded += batch["input_ids"].numel()
        return batch


def to_dataset(rows: list[dict], prompt_fn):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": prompt_fn(r["question"]), "completion": r["response"]}
                              for r in rows])


def processes() -> int:
    """Trainer processes of this run (torchrun sets WORLD_SIZE; 1 in the loop's own process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def trainer_args(cfg: SFTConfig, iteration: int, output_dir: str, deepspeed: str | None, bf16: bool,
                 fp16: bool = False, use_cpu: bool | None = None):
    from trl import SFTConfig as TRLConfig

    seed = cfg.seed * 1_000_003 + iteration
    return TRLConfig(
        output_dir=output_dir,  # required by the Trainer; nothing is written there (no checkpoints)
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.accumulation(processes()),
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a share of the optimizer steps
        lr_scheduler_type=cfg.scheduler,  # decay after warm-up, as imm.sft.torch_loop
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,  # 0 disables clipping in both backends
        seed=seed,
        data_seed=seed,
        bf16=bf16,  # autocast over fp32 weights; TRL would default to bf16 when fp16 is off, the caller decides
        fp16=fp16,
        use_cpu=not torch.cuda.is_available() if use_cpu is None else use_cpu,  # bf16 on CPU is refused without it
        activation_checkpointing=False,  # TRL turns it on by default; the torch backend does not use it
        completion_only_loss=True,  # labels -100 on the prompt, like imm.sft.torch_loop.encode
        max_length=None,  # no truncation, like the torch backend
        train_sampling_strategy="group_by_length",  # little padding, like imm.sft.torch_loop.batches
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN must reach FiniteLoss, not be replaced by the running mean
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        deepspeed=deepspeed,
    )


def gather_zero3(engine, model, dtypes: dict[str, torch.dtype]) -> None:
    """Put the full trained weights back into ``model`` and remove ZeRO-3's hooks.

    ZeRO-3 leaves each parameter as an empty shell holding one shard; the loop keeps using the model
    object after SFT (save, merge), so every rank gathers the fp32 master weights, casts them to the
    model's original dtype on the CPU (one bf16 copy: 2 bytes a parameter of host memory per rank)
    and puts them back.
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    full = {}
    for name, p in model.named_parameters():
        value = safe_get_full_fp32_param(p)
        if value is None:  # frozen parameters have no master copy
            with deepspeed.zero.GatheredParameters([p]):
                value = p.data.detach().clone()
        full[name] = value.detach().to(device="cpu", dtype=dtypes[name])
    engine.destroy()
    for name, p in model.named_parameters():
        p.data = full[name].to(p.device)


def train_trl(model, tok, rows: list[dict], prompt_fn, cfg: SFTConfig, iteration: int,
              deepspeed: str | None = None, bf16: bool = False, fp16: bool = False, save_to: Path | None = None) -> dict:
    """Fine-tune ``model`` in place with TRL's SFTTrainer; returns the stats of ``imm.sft.torch_loop.train``.

    ``bf16``/``fp16``: mixed precision over the model's own (fp32) weights, as the Trainer does it. The
    model is trained on the device it is on (one process) and is left there. ``save_to`` (ZeRO-3 workers
    of ``launch``): the ranks gather the 16-bit weights once and rank 0 writes them there
    (stage3_gather_16bit_weights_on_model_save), instead of every rank gathering full fp32 weights
    into ``model``, which is then left sharded."""
    from trl import SFTTrainer

    deepspeed = resolve(deepspeed) if deepspeed else None
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    device = model.device
    watch = FiniteLoss(iteration)
    with tempfile.TemporaryDirectory(prefix="imm-sft-") as out, _current_gpu(device):
        # the loop's process trains where the model is; a launch's workers load on the CPU, train on their GPU
        use_cpu = device.type == "cpu" if processes() == 1 else not torch.cuda.is_available()
        args = trainer_args(cfg, iteration, out, deepspeed, bf16, fp16, use_cpu=use_cpu)
        trainer = SFTTrainer(model=model, args=args,
                             train_dataset=to_dataset(rows, prompt_fn), processing_class=tok, callbacks=[watch])
        trainer.remove_callback(PrinterCallback)  # one dict per step on stdout; the stats carry the losses
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        start = time.perf_counter()
        trainer.train()
        took = time.perf_counter() - start
        if deepspeed and save_to is not None:
            trainer.save_model(str(save_to))  # a collective call: every rank takes part, rank 0 writes
        elif deepspeed:
            gather_zero3(trainer.model_wrapped, model, dtypes)
        else:
            for name, p in model.named_parameters():  # the caller gets its dtype back whatever the Trainer did
                p.data = p.data.to(dtypes[name])
    if processes() == 1:
        model.to(device)  # where the caller placed it, whatever device the Trainer chose
    model.eval()
    if not watch.losses:
        raise RuntimeError("the trainer logged no loss: is the training set empty?")
    last_epoch = watch.losses[-max(1, len(watch.losses) // cfg.epochs):]
    return {"loss": sum(last_epoch) / len(last_epoch), "first_loss": watch.losses[0],
            "steps": trainer.state.global_step, "tokens_per_s": summed(counter.tokens / took, args.device),
            "rank_tokens_per_s": counter.tokens / took, "threads": torch.get_num_threads(),
            "pad_share": 1 - counter.tokens / max(counter.padded, 1),
            "global_batch": cfg.batch_size * args.gradient_accumulation_steps * processes(), "device": str(device if processes() == 1 else args.device)}


def summed(value: float, device) -> float:
    """``value`` summed over the ranks of this run (itself in one process): every rank trains its own rows."""
    import torch.distributed as dist

    if processes() == 1 or not dist.is_initialized():
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(total)
    return float(total.item())


def _current_gpu(device: torch.device):
    """The Trainer places the model on the current GPU: make that the configured one (cuda:1 ...)."""
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def resolve(path: str) -> str:
    """A config path as given, else relative to the repository (Hydra may have changed the directory)."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    in_repo = Path(__file__).resolve().parents[2] / path
    if not in_repo.exists():
        raise FileNotFoundError(f"sft.deepspeed={path!r}: no such file here or in the repository")
    return str(in_repo)


def threads_per_rank(nproc: int) -> int:
    """CPU threads of each rank: the job's cores (this process's affinity: SLURM's cpus_per_task) shared out."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, nproc))


def launch(model_dir: str, rows: list[dict], prompt_fn, cfg: SFTConfig, iteration: int, out_dir: str, *,
           nproc: int, deepspeed: str | None = None, dtype: str = "bfloat16", launcher: tuple[str, ...] = ()) -> dict:
    """Train on ``nproc`` processes (one per GPU) with torchrun; returns the stats, model in out_dir/model.

    The prompts are rendered here, so the workers need no prompt function. ``launcher`` replaces the
    torchrun prefix (e.g. ``("accelerate", "launch", "--num_processes", "8")``). Each rank gets
    ``threads_per_rank`` CPU threads (OMP_NUM_THREADS), and the stats' tokens/s are the ranks' sum.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rows.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"question": prompt_fn(r["question"]), "response": r["response"]}) + "\n")
    (out / "sft.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    prefix = list(launcher) or [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={nproc}"]
    cmd = prefix + ["-m", "imm.sft.trl_trainer", "--model", model_dir, "--rows", str(out / "rows.jsonl"),
                    "--sft", str(out / "sft.json"), "--out", str(out), "--iteration", str(iteration),
                    "--dtype", dtype] + (["--deepspeed", resolve(deepspeed)] if deepspeed else [])
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": str(threads_per_rank(nproc))})
    return json.loads((out / "stats.json").read_text())


def main(argv=None) -> None:
    """One worker of ``launch`` (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""
    from imm.models import DTYPES, ModelConfig, load_model, load_tokenizer

    ap = argparse.ArgumentParser(description="one SFT worker process; see imm.sft.trl_trainer.launch")
    ap.add_argument("--model", required=True, help="model folder to fine-tune")
    ap.add_argument("--rows", required=True, help="jsonl of {question: rendered prompt, response}")
    ap.add_argument("--sft", required=True, help="json of imm.sft.config.SFTConfig fields")
    ap.add_argument("--out", required=True, help="rank 0 writes model/ and stats.json here")
    ap.add_argument("--iteration", type=int, default=0)
    ap.add_argument("--dtype", default="bfloat16", help="checkpoint dtype; bfloat16/float16 train in mixed "
                                                       "precision over fp32 master weights")
    ap.add_argument("--deepspeed", default=None, help="DeepSpeed JSON, e.g. conf/deepspeed/zero3.json")
    args = ap.parse_args(argv)
    cfg = SFTConfig(**json.loads(Path(args.sft).read_text()))
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
    bf16, fp16 = args.dtype == "bfloat16", args.dtype == "float16"
    out = Path(args.out)
    if args.deepspeed:
        # ZeRO-3 initialised sharded: the training arguments (and with them transformers' DeepSpeed
        # config) exist before from_pretrained, which then builds only this rank's shard of the fp32
        # master weights instead of a full copy per rank on the host
        ds_args = trainer_args(cfg, args.iteration, str(out), resolve(args.deepspeed), bf16, fp16)
        assert ds_args.device is not None  # the process group, now: the shards follow the world size
        import deepspeed

        deepspeed.init_distributed()  # DeepSpeed's view of that group, which zero.Init asks for the world size
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        sharded = all(hasattr(p, "ds_id") for p in model.parameters())  # ZeRO-3 parameters from the start
    else:  # fp32 master weights on the CPU; the Trainer places them on this rank's GPU
        model, sharded = load_model(ModelConfig(path=args.model, device="cpu"), dtype="float32"), False
    tok = load_tokenizer(args.model)
    stats = train_trl(model, tok, rows, lambda prompt: prompt, cfg, args.iteration, deepspeed=args.deepspeed,
                      bf16=bf16, fp16=fp16, save_to=out / "model" if args.deepspeed else None)
    stats["sharded_init"] = sharded
    if int(os.environ.get("RANK", "0")) == 0:
        if not args.deepspeed:
            model.to(DTYPES[args.dtype]).save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
        (out / "stats.json").write_text(json.dumps(stats))


def first_batch(model, tok, rows: list[dict], prompt_fn, cfg: SFTConfig) -> dict[str, torch.Tensor]:
    """One collated training batch as the trainer builds it (for checking the label mask)."""
    from trl import SFTTrainer

    with tempfile.TemporaryDirectory(prefix="imm-sft-") as out:
        trainer = SFTTrainer(model=model, args=trainer_args(cfg, 0, out, None, False),
                             train_dataset=to_dataset(rows, prompt_fn), processing_class=tok)
        return next(iter(trainer.get_train_dataloader()))


if __name__ == "__main__":
    main()
