"""Loading models and tokenizers, and moving weights between models and state dicts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional
from pathlib import Path

import torch
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers loads in the functions that need it: a dry run or a plan never does
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ASSETS = Path(__file__).parent / "assets"
DECODERS = ("auto", "slots", "hf")


@dataclass
class ModelConfig:
    name: str = "testbed"  # short name used in tags and experiment names
    path: str = "???"  # local directory (or hub id when source=hub)
    source: str = "local"  # local: the path must exist before anything runs | hub: a hub id
    dtype: str = "float32"  # float32 | bfloat16 | float16
    trust_remote_code: bool = False  # off unless a model needs it
    threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "auto"  # where every stage runs the model: auto (the first GPU, else cpu) | cpu | cuda | cuda:1 | mps
    prepare: Optional[str] = None  # a packaged model (imm/prepare.py) that writes ``path`` when it is missing
    # How sampling, evaluation and SFT compute (checkpoints and merging keep ``dtype``):
    decoder: str = "hf"  # hf: the transformers model, batch by batch | slots: continuous batching (imm/sampling/slots.py) | auto: slots on a CPU for Llama/Qwen2/Mistral models, else hf
    compute_dtype: str = "auto"  # the slots decoder's and (float32 weights) SFT's arithmetic: auto = bfloat16 where the hardware has it fast | float32 | bfloat16

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not one of {sorted(DTYPES)}")
        try:
            resolve_device(self.device)
        except RuntimeError as err:
            raise ValueError(f"model.device={self.device!r} is not a device torch knows ({err})") from None
        if self.decoder not in DECODERS:
            raise ValueError(f"model.decoder={self.decoder!r} is not one of {DECODERS}")
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"model.compute_dtype={self.compute_dtype!r} is not one of auto, float32, bfloat16")
        if self.decoder == "hf" and self.compute_dtype not in ("auto", self.dtype):
            raise ValueError(f"model.compute_dtype={self.compute_dtype} needs model.decoder=slots: the hf decoder "
                             f"runs the model in its own dtype ({self.dtype})")
        if self.source not in ("local", "hub"):
            raise ValueError(f"model.source={self.source!r} must be 'local' or 'hub'")
        if self.prepare and self.source == "local" and self.path != "???":
            from imm import prepare

            prepare.ensure(self.prepare, Path(self.path))
        if self.source == "local" and self.path != "???" and not os.path.isdir(self.path):
            raise FileNotFoundError(f"model.path={self.path!r}: no such model directory")


def asset_path(name: str) -> str:
    """Absolute path of a model shipped with imm (resolver ``${imm.asset:testbed}``)."""
    return str(ASSETS / name)


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    # PreTrainedTokenizerFast round-trips a `tokenizers`-trained tokenizer exactly; AutoTokenizer
    # may swap in another class with a different pre-tokenizer.
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(path)
    tok.clean_up_tokenization_spaces = False  # the legacy clean-up rewrites " ." and would alter samples
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_device(name: str) -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def device_kind(name: str) -> str:
    """cpu | cuda | mps ...: what changes the numbers a stage computes (the GPU's index does not)."""
    return resolve_device(name).type


def load_model(cfg: ModelConfig, path: str | None = None, dtype: str | None = None) -> PreTrainedModel:
    """The model on ``cfg.device``, in ``dtype`` (default: its storage dtype ``cfg.dtype``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path or cfg.path, dtype=DTYPES[dtype or cfg.dtype], trust_remote_code=cfg.trust_remote_code)
    return model.to(resolve_device(cfg.device)).eval()


def weights(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """A detached copy of the model's tensors, tied weights (embeddings = lm_head) listed once."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().clone()
    return out

