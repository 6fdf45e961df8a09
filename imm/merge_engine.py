"""Streaming merge of safetensors checkpoints: tensor by tensor, row block by row block.

    from imm.merge import MergeConfig
    from imm.merge_engine import merge_checkpoints
    stats = merge_checkpoints("runs/x/base", "runs/x/merge1", "runs/x/sft2", "runs/x/merge2",
                              MergeConfig(name="dare_linear", alpha=0.5, p=0.1), iteration=1)

Peak memory is a few row blocks (``imm.merge.CHUNK_ELEMS`` entries), whatever the model size:
inputs are read with ``pread`` into small buffers (a memory map would leave every page it touched
resident, so peak RSS would grow to the size of all three inputs), and each output shard's header
is written first, its tensors streamed after it. The result is a standard sharded checkpoint
(``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``) with the SFT model's
config and tokenizer files, and ``merge.json``: the rules applied and each tensor group's update
norm and density. Tensors are bit-identical to ``imm.merge.merge_state_dicts`` on the same inputs.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

import torch

from imm.merge import (CHUNK_ELEMS, MergeConfig, MergeStats, StatsAccumulator, check_compatible, is_excluded,
                       merge_blocks, num_layers, row_ranges, tensor_alpha_scale)

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

    def read(self, name: str, rows: slice = ...) -> torch.Tensor:
        """Tensor ``name`` (rows ``start:stop`` for a slice) in a fresh buffer."""
        meta = self.entries[name]
        shape, dtype = list(meta["shape"]), DTYPES[meta["dtype"]]
        begin, end = meta["data_offsets"]
        if rows is not ...:
            row = (end - begin) // shape[0] if shape[0] else 0
            begin, end, shape[0] = begin + rows.start * row, begin + rows.stop * row, rows.stop - rows.start
        out = torch.empty(shape, dtype=dtype)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        pos = 0
        while pos < end - begin:  # one pread returns at most ~2 GiB
            got = os.preadv(self.fd, [view[pos:]], self.data_start + begin + pos)
            if got <= 0:
                raise IOError(f"{self.path}: truncated tensor {name}")
            pos += got
        return out

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

    @property
    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name].entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.where[name].entries[name]["dtype"]]

    def read(self, name: str, rows: slice = ...) -> torch.Tensor:
        return self.where[name].read(name, rows)

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


def prefetch(items: Iterable, depth: int = 8) -> Iterator:
    """Iterate ``items`` produced by a background thread, at most ``depth`` ahead: reads release
    the GIL, so they overlap the merge arithmetic on the main thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():  # a consumer that stopped early must not leave this thread blocked
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            put(err)
        put(done)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


class BlockWriter:
    """Appends tensor bytes to a file from one background thread, in submission order."""

    def __init__(self, f, depth: int = 8) -> None:
        self.f, self.depth = f, depth
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: deque = deque()

    def write(self, block: torch.Tensor) -> None:
        data = memoryview(block.contiguous().reshape(-1).view(torch.uint8).numpy())
        self.pending.append(self.pool.submit(self.f.write, data))
        if len(self.pending) > self.depth:  # bound the bytes in flight
            self.pending.popleft().result()

    def close(self) -> None:
        while self.pending:
            self.pending.popleft().result()
        self.pool.shutdown()


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
    work = [(name, _source(name, rules[name]), _ranges(name, rules[name], sft, cfg))
            for names in shards for name in names]
    weight_map = {}
    with closing(prefetch(_reads(work, rules, sources))) as stream, torch_threads(1):
        for i, names in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            entries = [(n, sft.shape(n), _out_dtype(rules[n], n, sources)) for n in names]
            with open(out / fname, "wb") as f:
                write_header(f, entries, metadata)
                writer = BlockWriter(f)
                try:
                    for (name, src, ranges), (_, _, dtype) in zip(work[len(weight_map):], entries):
                        for block in _merged(name, src, rules[name], itertools.islice(stream, len(ranges)),
                                             cfg, iteration, n_layers, layer_scales, acc):
                            writer.write(block.to(dtype))
                        weight_map[name] = fname
                finally:
                    writer.close()
    return acc.result(), weight_map


@contextmanager
def torch_threads(n: int):
    """Blocks are small and memory-bound: intra-op threads cost more in sync than they gain, and
    the other core is left to the read and write threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _merged(name, src, rule, inputs, cfg, iteration, n_layers, layer_scales, acc):
    """The output blocks of one tensor, in order."""
    if rule.startswith("copy:"):
        yield from (t for (t,) in inputs)
        return
    alpha, scale = tensor_alpha_scale(cfg, src, n_layers, layer_scales)
    for block, stats in merge_blocks(cfg, src, inputs, iteration, alpha, scale):
        if rule == "merge":  # a tied duplicate would count its twin twice
            acc.add(name, stats)
        yield block


def _source(name: str, rule: str) -> str:
    # a tied duplicate is merged again from its twin's rows and seed, so both copies are identical
    return rule[5:] if rule.startswith("tied:") else name


def _ranges(name: str, rule: str, sft: Checkpoint, cfg: MergeConfig) -> list:
    shape = sft.shape(_source(name, rule))
    if rule.startswith("copy:"):
        return row_ranges("dare_linear", shape, CHUNK_ELEMS * 4 // sft.dtype(name).itemsize)
    return row_ranges(cfg.name, shape)


def _reads(work, rules, sources):
    """The input row blocks of every tensor, in writing order: (tensor,) to copy, (base, prev, sft) to merge."""
    for name, src, ranges in work:
        rule = rules[name]
        for rows in ranges:
            if rule.startswith("copy:"):
                yield (sources[rule[5:]].read(name, rows),)
            else:
                yield tuple(sources[k].read(src, rows) for k in ("base", "prev", "sft"))


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
