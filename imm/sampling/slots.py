"""Continuous-batching decoder for Llama-shaped models (Llama, Qwen2, Mistral) on the CPU.

A decode step of a small model on a CPU is bound by the weights' matmuls only at large batches; at
the batches ``transformers`` affords there (its cache grows by concatenation, every row keeps its own
copy of the few-shot prefix's keys and values) Python and copies take most of the time. Here:

- the weights are packed once per call in the compute dtype (bfloat16 where the CPU has AMX /
  avx512_bf16: ~7x the float32 matmul rate), q/k/v and gate/up fused into one matmul each;
- the prompts' shared prefix (the few-shot exemplars) is run once, and its keys and values are held
  once: every row attends to the same tensors (two-part attention, its softmax taken over both parts);
- each row's own tokens live in a fixed slot of a preallocated cache, so a step writes one position
  per row and copies nothing;
- a row that ends frees its slot, and the next waiting prompt takes it (prefilled in a group with the
  others that take slots at that step), so the batch stays full until the prompts run out.

``imm.sampling.batching.decode_slots`` keeps ``imm.sampling.decode.decode``'s rules: per-row temperature and top-p, ends
at every EOS id, at a stop string and (``at_answer``) after the first final-answer statement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


ARCHITECTURES = ("llama", "qwen2", "mistral")  # model_type values whose decoder layers this packs


def supports(model) -> bool:
    """Whether ``model`` is a decoder this module packs (``packs``'s rule on its config)."""
    return packs(model.config) and hasattr(getattr(model, "model", None), "rotary_emb")


def packs(c) -> bool:
    """Whether a model config (a transformers config or config.json as a namespace) is a Llama-shaped
    stack with plain RoPE, SiLU MLP, RMSNorm and full attention (no sliding window, no RoPE scaling)."""
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    return (getattr(c, "model_type", None) in ARCHITECTURES and getattr(c, "hidden_act", "silu") == "silu"
            and kind == "default" and not getattr(c, "use_sliding_window", False)
            and not getattr(c, "mlp_bias", False))


@dataclass
class Layer:
    ln1: torch.Tensor
    qkv: "Weight"
    o: "Weight"
    ln2: torch.Tensor
    gate_up: "Weight"
    down: "Weight"


class Packed:
    """A model's weights in one compute dtype, fused for the decode step."""

    @torch.no_grad()
    def __init__(self, model, dtype: torch.dtype, rows: int = 128):
        c, m = model.config, model.model
        self.dtype, self.device = dtype, next(model.parameters()).device
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.eps = c.rms_norm_eps
        cast = lambda t: None if t is None else t.detach().to(dtype).contiguous()  # noqa: E731
        self.embed = cast(m.embed_tokens.weight)
        self.norm = cast(m.norm.weight)
        self.lm_head = Weight(cast(model.get_output_embeddings().weight), None, rows)
        self.layers = []
        for layer in m.layers:
            a, mlp = layer.self_attn, layer.mlp
            biases = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
            self.layers.append(Layer(
                ln1=cast(layer.input_layernorm.weight),
                qkv=Weight(cast(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),
                           cast(torch.cat(biases)) if all(b is not None for b in biases) else None, rows),
                o=Weight(cast(a.o_proj.weight), cast(a.o_proj.bias), rows),
                ln2=cast(layer.post_attention_layernorm.weight),
                gate_up=Weight(cast(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])), None, rows),
                down=Weight(cast(mlp.down_proj.weight), None, rows)))
        rot = m.rotary_emb
        self.inv_freq = rot.inv_freq.detach().float().to(self.device)
        self.rope_scale = float(getattr(rot, "attention_scaling", 1.0))

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at ``positions`` (any shape), last dim head_dim, as transformers computes them."""
        freqs = positions.float()[..., None] * self.inv_freq
        emb = torch.cat([freqs, freqs], -1)
        return (emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype)

    def rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = x.float()
        return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(self.dtype)


def _prepack(w: torch.Tensor, rows: int):
    """The weight reordered for oneDNN's matmul (AMX tiles) once, instead of at every call; None where
    this torch build cannot (then ``F.linear`` runs on the plain weight)."""
    if w.device.type != "cpu" or w.dtype != torch.bfloat16:
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        probe = torch.randn(3, w.shape[1], dtype=w.dtype)
        same = torch.equal(torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], ""), F.linear(probe, w))
        return packed if same else None
    except (AttributeError, RuntimeError):
        return None


class Weight:
    """A linear layer's weight (and bias) in the compute dtype, prepacked where oneDNN can."""

    def __init__(self, w: torch.Tensor, bias: torch.Tensor | None, rows: int):
        self.w, self.bias, self.packed = w, bias, _prepack(w, rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.w, self.bias)


def _flash(q, k, v, mask):
    """The fused attention kernel's output and log-sum-exp (float32) of q over k, v (same head count)."""
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask.float()
    lse = scores.logsumexp(-1)
    return ((scores - lse[..., None]).exp() @ v.float()).to(q.dtype), lse


def _additive(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, float("-inf"))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class Slots:
    """The decoder's state for one call: the shared prefix's keys/values and ``rows`` slots of ``width``
    positions each for the rows' own tokens."""

    def __init__(self, packed: Packed, prefix: list[int], rows: int, width: int):
        self.p, self.rows, self.width = packed, rows, width
        p = packed
        self.k = torch.zeros(len(p.layers), rows, p.kv_heads, width, p.head_dim, dtype=p.dtype, device=p.device)
        self.v = torch.zeros(len(p.layers), rows, p.kv_heads, width, p.head_dim, dtype=p.dtype, device=p.device)
        self._buf = None
        self.length = torch.zeros(rows, dtype=torch.long, device=p.device)  # own tokens held per slot
        self.offset = len(prefix)
        self.pk = self.pv = None  # [layers, kv_heads, P, head_dim]
        if prefix:
            self._run_prefix(torch.tensor(prefix, device=p.device))

    # -- the forward passes -------------------------------------------------------------------------

    @torch.no_grad()
    def _run_prefix(self, ids: torch.Tensor) -> None:
        p, n = self.p, ids.shape[0]
        x = p.embed[ids][None]  # [1, P, D]
        cos, sin = p.rope(torch.arange(n, device=p.device))
        keys, values = [], []
        causal = torch.ones(n, n, dtype=torch.bool, device=p.device).tril()
        for layer in p.layers:
            q, k, v = self._qkv(layer, x, cos, sin)  # q [1, H, P, hd], k/v [1, KV, P, hd]
            keys.append(k[0])
            values.append(v[0])
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, enable_gqa=True)
            x = self._after_attention(layer, x, att)
        self.pk, self.pv = torch.stack(keys), torch.stack(values)

    def _qkv(self, layer: Layer, x: torch.Tensor, cos, sin):
        p = self.p
        h = layer.qkv(p.rms(x, layer.ln1))
        b, t = x.shape[:2]
        q, k, v = h.split([p.heads * p.head_dim, p.kv_heads * p.head_dim, p.kv_heads * p.head_dim], -1)
        q = q.view(b, t, p.heads, p.head_dim).transpose(1, 2)
        k = k.view(b, t, p.kv_heads, p.head_dim).transpose(1, 2)
        v = v.view(b, t, p.kv_heads, p.head_dim).transpose(1, 2)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def _after_attention(self, layer: Layer, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        p = self.p
        b, t = x.shape[:2]
        x = x + layer.o(att.transpose(1, 2).reshape(b, t, -1))
        gate, up = layer.gate_up(p.rms(x, layer.ln2)).chunk(2, -1)
        return x + layer.down(F.silu(gate) * up)

    def _attend(self, li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention of q [B, H, T, hd] over the shared prefix (all visible) and the rows' own keys and
        values k, v [B, KV, S, hd] where ``mask`` [B, T, S] (additive) allows: each part by the fused
        attention kernel, which also gives its log-sum-exp, then the two merged as one softmax would."""
        p = self.p
        b, _, t, hd = q.shape
        g = p.heads // p.kv_heads
        qg = q.reshape(b, p.kv_heads, g * t, hd)  # a KV head's g query heads side by side: no key is repeated
        own_mask = mask[:, None].expand(b, g, t, -1).reshape(b, 1, g * t, -1)
        own, own_lse = _flash(qg, k, v, own_mask)
        if self.pk is None:
            return own.reshape(b, p.heads, t, hd)
        flat = qg.transpose(0, 1).reshape(1, p.kv_heads, b * g * t, hd)  # every row's queries against one prefix
        shared, shared_lse = _flash(flat, self.pk[li][None], self.pv[li][None], None)
        shared = shared.view(p.kv_heads, b, g * t, hd).transpose(0, 1)
        shared_lse = shared_lse.view(p.kv_heads, b, g * t).transpose(0, 1)
        top = torch.maximum(own_lse, shared_lse)
        w_own, w_shared = (own_lse - top).exp_(), (shared_lse - top).exp_()
        out = (own.float() * w_own[..., None] + shared.float() * w_shared[..., None]) / (w_own + w_shared)[..., None]
        return out.to(p.dtype).reshape(b, p.heads, t, hd)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits, in a buffer the next call overwrites (a fresh [rows, vocab] tensor a step costs
        more in page faults than the copy)."""
        out = self.p.lm_head(self.p.rms(x, self.p.norm))
        if self._buf is None or self._buf.shape[0] < out.shape[0]:
            self._buf = torch.empty(out.shape, dtype=torch.float32, device=out.device)
        return self._buf[:out.shape[0]].copy_(out)

    @torch.no_grad()
    def prefill(self, slots: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:
        """Run each prompt's own tokens into its slot (``slots`` [R], one per prompt, slot lengths reset);
        the logits after each prompt's last token, [R, vocab]."""
        p, dev = self.p, self.p.device
        lens = torch.tensor([len(r) for r in ids], device=dev)
        t = int(lens.max())
        x_ids = torch.zeros(len(ids), t, dtype=torch.long, device=dev)
        for i, r in enumerate(ids):  # right-padded: a row's tokens sit at its slot's first positions
            x_ids[i, :len(r)] = torch.tensor(r, device=dev)
        x = p.embed[x_ids]
        cos, sin = p.rope(self.offset + torch.arange(t, device=dev))
        pos = torch.arange(t, device=dev)
        keep = (pos[None, None, :] <= pos[None, :, None]) & (pos[None, None, :] < lens[:, None, None])  # [R, T, T]
        mask = _additive(keep, p.dtype)
        for li, layer in enumerate(p.layers):
            q, k, v = self._qkv(layer, x, cos, sin)
            self.k[li, slots, :, :t] = k
            self.v[li, slots, :, :t] = v
            x = self._after_attention(layer, x, self._attend(li, q, k, v, mask))
        self.length[slots] = lens
        return self._logits(x[torch.arange(len(ids), device=dev), lens - 1])

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """One new token for every slot (``tokens`` [rows]; slots not ``live`` run on a placeholder and
        keep their length): logits [rows, vocab]. Every slot runs, so the cache is read in place."""
        p = self.p
        pos = self.length.clamp(max=self.width - 1)  # where each row's token goes in its slot
        x = p.embed[tokens][:, None]  # [B, 1, D]
        cos, sin = p.rope(self.offset + pos)
        cos, sin = cos[:, None, None], sin[:, None, None]
        width = int(pos.max()) + 1  # attend over the slots' used positions only (the kernel reads the slice in place)
        mask = _additive((torch.arange(width, device=p.device)[None, :] <= pos[:, None])[:, None], p.dtype)  # [B, 1, S]
        rows = torch.arange(self.rows, device=p.device)
        for li, layer in enumerate(p.layers):
            q, k, v = self._qkv(layer, x, cos, sin)
            self.k[li, rows, :, pos] = k[:, :, 0]
            self.v[li, rows, :, pos] = v[:, :, 0]
            x = self._after_attention(layer, x, self._attend(li, q, self.k[li, :, :, :width], self.v[li, :, :, :width],
                                                             mask))
        self.length += live.long()
        return self._logits(x[:, 0])

    def copy_slot(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Rows ``dst`` start as copies of rows ``src`` (a prompt's n samples share its prefill)."""
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]
        self.length[dst] = self.length[src]

    def keep_only(self, slots: torch.Tensor) -> None:
        """Shrink to ``slots`` (in that order): once few rows are left, a step runs on them alone."""
        self.k, self.v = self.k[:, slots].contiguous(), self.v[:, slots].contiguous()
        self.length = self.length[slots]
        self.rows = len(slots)
