"""llama.cpp's batched decoding on the same GGUF file: what a CPU user would run instead of imm.

Install (built from source for this CPU: AVX-512, AVX512-BF16, AMX):

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36

The loop is llama.cpp's own ``batched`` / ``llama-server --parallel N`` scheme through the library's C
API: one unified KV cache, the prompts' shared prefix decoded once and shared by every sequence
(``llama_memory_seq_cp``), each sequence's own tokens prefilled in one batch, then one
``llama_decode`` per step over every live sequence; a sequence that ends frees its slot for the next
prompt (continuous batching), as imm's slots decoder does. The weights stay in the file's layout
(``use_extra_bufts = False``): with llama.cpp's AMX / repacked buffers, ``llama_decode`` segfaults on
this GGUF in 0.3.36, in the library's own ``Llama`` API too.
"""

from __future__ import annotations

import ctypes


def _quiet(level, text, data) -> None:
    pass


try:
    import llama_cpp

    _QUIET = llama_cpp.llama_log_callback(_quiet)  # kept alive: llama.cpp holds the pointer
except ImportError:
    _QUIET = None


def _tokens(L, vocab, text: str, special: bool) -> list[int]:
    raw = text.encode()
    buf = (L.llama_token * (len(raw) + 8))()
    n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), special, True)
    return list(buf[:n])


def _piece(L, vocab, token: int) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = L.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:max(n, 0)]


def batched(gguf: str, prompts: list[str], temps: list[float], max_new: int, slots: int, threads: int,
            seed: int = 0) -> tuple[list[list[str]], int]:
    """k = len(temps) samples per prompt, ``slots`` sequences decoded at once; (texts, new tokens)."""
    import llama_cpp as L

    L.llama_log_set(_QUIET, ctypes.c_void_p())
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.use_extra_bufts = False  # the AMX / repacked weight buffers crash llama_decode on this GGUF (0.3.36)
    model = L.llama_model_load_from_file(gguf.encode(), mp)
    vocab = L.llama_model_get_vocab(model)
    ids = [_tokens(L, vocab, p, True) for p in prompts]
    common = min(len(x) for x in ids)
    shared = next((i for i in range(common) if any(x[i] != ids[0][i] for x in ids)), common)
    shared = min(shared, common - 1)  # each prompt keeps at least its last token to prefill
    jobs = [(i, t) for i in range(len(prompts)) for t in temps]
    longest = max(len(x) for x in ids) - shared
    cp = L.llama_context_default_params()
    cp.n_ctx = shared + slots * (longest + max_new) + 256
    # one llama_decode takes every row's prefill at once (llama.cpp splits it into ubatches itself and
    # keeps every requested row's logits; a second decode would drop the first one's)
    cp.n_batch = max(shared, slots * (longest + 1))
    cp.n_ubatch = 512
    cp.n_seq_max = slots + 1
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified = True
    cp.no_perf = True
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise RuntimeError("llama.cpp could not create the context")
    mem = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(cp.n_batch, 0, 1)

    def run(entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """Decode (token, position, sequence, wants logits) in one call; the entries whose logits it keeps."""
        batch.n_tokens = len(entries)
        for j, (tok, pos, seq, want) in enumerate(entries):
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, pos, 1
            batch.seq_id[j][0], batch.logits[j] = seq, want
        if L.llama_decode(ctx, batch):
            raise RuntimeError("llama_decode failed (context too small?)")
        return [j for j, entry in enumerate(entries) if entry[3]]

    prefix = slots  # sequence id that holds the shared prefix
    run([(t, p, prefix, False) for p, t in enumerate(ids[0][:shared])])
    eog = lambda t: L.llama_vocab_is_eog(vocab, t)  # noqa: E731
    texts: list[list[bytes]] = [[b"" for _ in temps] for _ in prompts]
    samplers = [L.llama_sampler_chain_init(L.llama_sampler_chain_default_params()) for _ in range(slots)]
    live: dict[int, list] = {}  # slot -> [job index, position, new tokens]
    waiting, new = list(range(len(jobs))), 0

    def admit() -> list[tuple[int, int, int, bool]]:
        entries = []
        for s in range(slots):
            if s in live or not waiting:
                continue
            j = waiting.pop(0)
            i, temp = jobs[j]
            L.llama_memory_seq_rm(mem, s, -1, -1)
            L.llama_memory_seq_cp(mem, prefix, s, -1, -1)
            chain = samplers[s]
            while L.llama_sampler_chain_n(chain):
                L.llama_sampler_free(L.llama_sampler_chain_remove(chain, 0))
            if temp > 0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(temp))
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed + j))
            else:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            own = ids[i][shared:]
            entries += [(t, shared + p, s, p == len(own) - 1) for p, t in enumerate(own)]
            live[s] = [j, len(ids[i]), 0]
        return entries

    entries = admit()
    while live:
        wanted = run(entries)
        done, entries = entries, []
        for k in wanted:
            s = done[k][2]
            token = L.llama_sampler_sample(samplers[s], ctx, k)
            j, pos, made = live[s]
            if eog(token):
                del live[s]
                continue
            _append(texts, jobs, j, temps, _piece(L, vocab, token))
            new += 1
            made += 1
            if made >= max_new:
                del live[s]
                continue
            live[s] = [j, pos + 1, made]
            entries.append((token, pos, s, True))
        entries += admit()
    for chain in samplers:
        L.llama_sampler_free(chain)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return [[t.decode("utf-8", "replace") for t in group] for group in texts], new


def _append(texts, jobs, j: int, temps, piece: bytes) -> None:
    i, _ = jobs[j]
    texts[i][j % len(temps)] += piece
