"""Streaming merge of safetensors checkpoints: tensor by tensor, row block by row block.

    from imm.merge.rules import MergeConfig
    from imm.merge.engine import merge_checkpoints
    stats = merge_checkpoints("runs/x/base", "runs/x/merge1", "runs/x/sft2", "runs/x/merge2",
                              MergeConfig(name="dare_linear", alpha=0.5, p=0.1), iteration=1)

Peak memory is a few row blocks (``imm.merge.rules.CHUNK_ELEMS`` entries), whatever the model size:
inputs are read with ``pread`` into one reused buffer per checkpoint (a memory map would leave every
page it touched resident, so peak RSS would grow to the size of all three inputs; fresh buffers per
block are page-faulted afresh), and each output shard's header is written first, its tensors
streamed after it. One thread does it all, block after block (see ``torch_threads``). The result
is a standard sharded checkpoint (``model-0000i-of-0000n.safetensors`` +
``model.safetensors.index.json``) with the SFT model's config and tokenizer files, and
``merge.json``: the rules applied and each tensor group's update norm and density.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from imm.merge.rules import (CHUNK_ELEMS, MergeConfig, Workspace, check_compatible, is_excluded, merge_blocks,
                             num_layers, row_ranges, tensor_alpha_scale)
from imm.merge.stats import MergeStats, StatsAccumulator

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_SHARD_BYTES = 2 * 1024**3


class SafetensorsFile:
    """One .safetensors file: the header parsed once, rows read on demand with pread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        self.data_start = 8 + size
        self.metadata = header.pop("__metadata__", {})
        self.entries = header
        self.fd = os.open(path, os.O_RDONLY)

    def span(self, name: str, rows: slice = ...) -> tuple[int, int, list[int]]:
        """(first byte, end byte, shape) of tensor ``name`` or of its rows ``start:stop``."""
        meta = self.entries[name]
        shape = list(meta["shape"])
        begin, end = meta["data_offsets"]
        if rows is not ...:
            row = (end - begin) // shape[0] if shape[0] else 0
            begin, end, shape[0] = begin + rows.start * row, begin + rows.stop * row, rows.stop - rows.start
        return begin, end, shape

    def read(self, name: str, rows: slice = ..., into: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor ``name`` (rows ``start:stop`` for a slice) in a fresh buffer, or at the start of
        ``into`` (uint8, large enough)."""
        begin, end, shape = self.span(name, rows)
        raw = torch.empty(end - begin, dtype=torch.uint8) if into is None else into[:end - begin]
        view = memoryview(raw.numpy())
        pos = 0
        while pos < end - begin:  # one pread returns at most ~2 GiB
            got = os.preadv(self.fd, [view[pos:]], self.data_start + begin + pos)
            if got <= 0:
                raise IOError(f"{self.path}: truncated tensor {name}")
            pos += got
        return raw.view(DTYPES[self.entries[name]["dtype"]]).view(shape)

    def close(self) -> None:
        os.close(self.fd)


class Checkpoint:
    """A Hugging Face checkpoint folder: one model.safetensors or shards named by the index."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.dir = Path(path)
        if (self.dir / INDEX).is_file():
            weight_map = json.loads((self.dir / INDEX).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (self.dir / SINGLE).is_file():
            files = [SINGLE]
        else:
            raise FileNotFoundError(f"{self.dir}: no {SINGLE} or {INDEX} (safetensors checkpoints only)")
        self.files = {f: SafetensorsFile(self.dir / f) for f in files}
        self.where = {name: sf for sf in self.files.values() for name in sf.entries}
        self.config = json.loads((self.dir / "config.json").read_text()) if (self.dir / "config.json").is_file() else {}
        self.buffer = torch.empty(0, dtype=torch.uint8)

    @property
    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name].entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.where[name].entries[name]["dtype"]]

    def read(self, name: str, rows: slice = ..., reuse: bool = False) -> torch.Tensor:
        """Tensor ``name`` or its rows; with ``reuse``, in this checkpoint's one buffer, which the
        next such read overwrites (no fresh memory to page-fault per block)."""
        if not reuse:
            return self.where[name].read(name, rows)
        sf = self.where[name]
        begin, end, _ = sf.span(name, rows)
        if self.buffer.numel() < end - begin:
            self.buffer = torch.empty(end - begin, dtype=torch.uint8)
        return sf.read(name, rows, into=self.buffer)

    def close(self) -> None:
        for sf in self.files.values():
            sf.close()


def check_checkpoints(base: Checkpoint, prev: Checkpoint, sft: Checkpoint) -> None:
    """Refuse different architectures or vocabularies before anything is written."""
    shapes = {c: {n: c.shape(n) for n in c.names} for c in (base, prev, sft)}
    check_compatible(shapes[base], shapes[sft], f"base {base.dir} and SFT {sft.dir}")
    check_compatible(shapes[prev], shapes[sft], f"previous {prev.dir} and SFT {sft.dir}")
    for c in (base, prev):
        for key in ("model_type", "vocab_size"):
            if key in c.config and key in sft.config and c.config[key] != sft.config[key]:
                raise ValueError(f"cannot merge {c.dir} and {sft.dir}: config {key} "
                                 f"{c.config[key]!r} vs {sft.config[key]!r}")


def tied_aliases(sft: Checkpoint) -> dict[str, str]:
    """Tensors stored twice although the config ties them: lm_head.weight → the input embedding."""
    if not sft.config.get("tie_word_embeddings", False) or "lm_head.weight" not in sft.where:
        return {}
    embed = next((n for n in sft.names if n.endswith("embed_tokens.weight")), None)
    return {"lm_head.weight": embed} if embed else {}


def plan(cfg: MergeConfig, sft: Checkpoint) -> dict[str, str]:
    """What happens to each tensor: merge, copy:<model> (excluded, not float) or tied:<tensor>."""
    tied = tied_aliases(sft)
    rules = {}
    for name in sft.names:
        if name in tied:
            rules[name] = f"tied:{tied[name]}"
        elif is_excluded(cfg, name):
            rules[name] = f"copy:{cfg.exclude_from}"
        elif not sft.dtype(name).is_floating_point:
            rules[name] = "copy:sft"
        else:
            rules[name] = "merge"
    return rules


def shard_names(sft: Checkpoint, max_bytes: int) -> list[list[str]]:
    """Tensors grouped in order into shards of at most ``max_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sft.names:
        nbytes = _nbytes(sft.shape(name), sft.dtype(name))
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _nbytes(shape, dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=dtype).element_size()


def write_header(f, entries: list[tuple[str, tuple[int, ...], torch.dtype]], metadata: dict[str, str]) -> None:
    """The safetensors header (8-byte size + JSON, padded to 8 bytes) for tensors written next, in order."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, shape, dtype in entries:
        nbytes = _nbytes(shape, dtype)
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(len(raw).to_bytes(8, "little") + raw)


def merge_checkpoints(base_dir, prev_dir, sft_dir, out_dir, cfg: MergeConfig, iteration: int,
                      layer_scales: dict[int, float] | None = None,
                      max_shard_bytes: int = MAX_SHARD_BYTES) -> MergeStats:
    """Merge three safetensors checkpoints into ``out_dir`` (see the module docstring)."""
    base, prev, sft = Checkpoint(base_dir), Checkpoint(prev_dir), Checkpoint(sft_dir)
    try:
        check_checkpoints(base, prev, sft)
        rules = plan(cfg, sft)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("model*.safetensors*"):
            old.unlink()
        stats, weight_map = _write_shards(base, prev, sft, out, cfg, iteration, layer_scales, rules, max_shard_bytes)
        _write_index(out, weight_map, sft)
        _copy_side_files(Path(sft_dir), out)
        _write_record(out, cfg, iteration, layer_scales, rules, stats, (base_dir, prev_dir, sft_dir))
        return stats
    finally:
        for c in (base, prev, sft):
            c.close()


def _write_shards(base, prev, sft, out, cfg, iteration, layer_scales, rules, max_shard_bytes):
    sources = {"sft": sft, "base": base, "prev": prev}
    n_layers = num_layers(sft.names)
    acc = StatsAccumulator()
    metadata = {"format": "pt", "merge": json.dumps(_rules_record(cfg, iteration, rules))}
    shards = shard_names(sft, max_shard_bytes)
    work = Workspace(reuse_output=True)  # every block is written before the next is merged
    weight_map = {}
    with torch_threads(1):
        for i, names in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            with open(out / fname, "wb") as f:
                write_header(f, [(n, sft.shape(n), _out_dtype(rules[n], n, sources)) for n in names], metadata)
                for name in names:
                    for block in _blocks(name, rules[name], sources, cfg, iteration, n_layers, layer_scales,
                                         acc, work):
                        f.write(memoryview(block.reshape(-1).view(torch.uint8).numpy()))
                    weight_map[name] = fname
    return acc.result(), weight_map


@contextmanager
def torch_threads(n: int):
    """One intra-op thread, one thread in all: the ops are memory-bound, and on a machine shared
    with other jobs every op's join waits for a descheduled thread (with 2 intra-op threads each op
    took 30-100x longer), while read, mask and write threads beside the arithmetic cost more CPU in
    hand-offs and fresh buffers than their overlap saved (bench/RESULTS-merge.md)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _blocks(name, rule, sources, cfg, iteration, n_layers, layer_scales, acc, work):
    """The output blocks of one tensor, in order; each is valid until the next is produced."""
    sft = sources["sft"]
    src = _source(name, rule)
    if rule.startswith("copy:"):
        model = sources[rule[5:]]
        for rows in row_ranges("dare_linear", sft.shape(name), CHUNK_ELEMS * 4 // sft.dtype(name).itemsize):
            yield model.read(name, rows, reuse=True)
        return
    alpha, scale = tensor_alpha_scale(cfg, src, n_layers, layer_scales)
    ranges = row_ranges(cfg.name, sft.shape(src))
    inputs = (tuple(sources[k].read(src, rows, reuse=True) for k in ("base", "prev", "sft")) for rows in ranges)
    for block, stats in merge_blocks(cfg, src, inputs, iteration, alpha, scale, work):
        if rule == "merge":  # a tied duplicate would count its twin twice
            acc.add(name, stats)
        yield block


def _source(name: str, rule: str) -> str:
    # a tied duplicate is merged again from its twin's rows and seed, so both copies are identical
    return rule[5:] if rule.startswith("tied:") else name


def _out_dtype(rule: str, name: str, sources) -> torch.dtype:
    if rule.startswith("copy:"):
        return sources[rule[5:]].dtype(name)
    return sources["sft"].dtype(name)


def _write_index(out: Path, weight_map: dict[str, str], sft: Checkpoint) -> None:
    total = sum(_nbytes(sft.shape(n), sft.dtype(n)) for n in weight_map)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _copy_side_files(src: Path, out: Path) -> None:
    """Config, generation config and tokenizer files: everything in the SFT folder but weights."""
    for path in src.iterdir():
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and path.name != "merge.json":
            shutil.copy2(path, out / path.name)


def _rules_record(cfg: MergeConfig, iteration: int, rules: dict[str, str]) -> dict:
    return {"method": asdict(cfg), "iteration": iteration,
            "excluded": sorted(n for n, r in rules.items() if r.startswith("copy:")),
            "tied": {n: r[5:] for n, r in rules.items() if r.startswith("tied:")}}


def _write_record(out, cfg, iteration, layer_scales, rules, stats: MergeStats, inputs) -> None:
    record = _rules_record(cfg, iteration, rules)
    record.update(inputs=dict(zip(("base", "prev", "sft"), map(str, inputs))),
                  layer_scales={str(k): v for k, v in (layer_scales or {}).items()},
                  stats=asdict(stats))
    (out / "merge.json").write_text(json.dumps(record, indent=2) + "\n")
