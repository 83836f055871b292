"""A GPT-2-architecture decoder, written from scratch, with three heads on one trunk.

GPT-2 (Radford et al. 2019): token (`wte`) and position (`wpe`) embeddings, pre-LayerNorm blocks (attention,
then a GELU MLP, each added to the residual stream), a final `ln_f`; GPT-2's names and init, so its weights
load one to one (`load_gpt2_state_dict`). The output layer is tied to `wte`. Heads:
- `lm`:     logits over the vocabulary (the policy);
- `scalar`: one number per sequence, read at the last real token (the reward model);
- `value`:  one number per token (the PPO critic); its `score` layer is `scalar`'s, so it may start as the RM.
Padding: `attention_mask` (B, T), 1 = real token; prompts are left-padded, position ids are
cumsum(mask) − 1. One departure: pos_embedding="rope" (rotary positions, RoFormer eq. 34) replaces `wpe`.
GPTConfig's default is GPT-2's table (older checkpoints lack the field); train_sft.py picks rope (NOTES: why).
Precision: see precision.py. The one fast path, FAST_GELU, is in fast.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanorlhf import fast
from nanorlhf.precision import attention_dtype, autocast_off

HEADS = ("lm", "scalar", "value")
FAST_GELU = True  # the MLP's GELU through fast.gelu: the same function, faster in fp32 on a CPU


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    block_size: int = 128  # maximum context length (learned position embeddings)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # RLHF stages keep it 0: log-probs must be reproducible (ratio == 1 at step 0)
    bias: bool = True
    head: str = "lm"  # "lm" | "scalar" | "value"
    pos_embedding: str = "learned"  # "learned" (GPT-2's wpe) | "rope" (rotary, see the module docstring)
    rope_base: float = 10000.0  # θ of RoFormer: channel pair i turns by position · θ^(−2i/head_dim)
    vocab_multiple: int = 64  # embedding/output rows padded up to a multiple of this (see `padded_vocab`)

    @property
    def padded_vocab(self) -> int:
        """Rows of `wte`: vocab_size rounded up to a multiple of vocab_multiple. Why: a GPU runs the output
        layer's matmul (and a bf16 row of logits needs 16-byte alignment) far better at a multiple of 64 than
        at, say, our BPE's 1,337 tokens (nanoGPT pads GPT-2's 50,257 to 50,304 for the same reason). The
        tokenizer keeps its ids; the padded rows are never an input, and their logits are cut off before
        anything samples or scores them (`lm_logits`, `lm_head_weight`)."""
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys/values of every layer for the positions decoded so far, preallocated to `max_len`.

    `key_mask` (B, max_len) remembers which cached positions are real tokens (left padding is not), and
    `next_pos` (B,) the position id the next token of each row gets.
    """

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device, dtype):
        hd = cfg.n_embd // cfg.n_head
        self.k = torch.zeros(cfg.n_layer, batch, cfg.n_head, max_len, hd, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0

    def keep_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows `index` (generate drops the rows that have finished), their positions
        so far copied into a cache of the same max_len."""
        L = self.length
        k = self.k.new_empty(self.k.shape[0], len(index), *self.k.shape[2:])
        v = torch.empty_like(k)
        k[:, :, :, :L], v[:, :, :, :L] = self.k[:, index, :, :L], self.v[:, index, :, :L]
        self.k, self.v = k, v
        self.key_mask, self.next_pos = self.key_mask[index], self.next_pos[index]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoFormer eq. 34 with the channel pairs (i, i + hd/2) (the "rotate half" layout of GPT-NeoX/LLaMA):
    x (B, H, T, hd); cos, sin (B or 1, 1, T, hd/2) of position · frequency."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, attn_mask=None, cache: KVCache | None = None, layer: int = 0, first: int = 0,
                rope=None):
        """Outputs (B, T - first, C) for the queries at positions first… (keys and values: all T).
        rope: (cos, sin) of every position, or None (learned positions were added to the input)."""
        B, T, C = x.shape
        hd = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q[:, first:].view(B, T - first, self.n_head, hd).transpose(1, 2)  # (B, H, T - first, hd)
        k, v = (t.view(B, T, self.n_head, hd).transpose(1, 2) for t in (k, v))  # (B, H, T, hd)
        if rope is not None:  # keys are cached rotated: each by its own position, once
            cos, sin = rope
            q, k = rotate(q, cos[:, :, first:], sin[:, :, first:]), rotate(k, cos, sin)
        if cache is not None:  # append this step's keys/values, attend over everything cached so far
            start = cache.length
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k, v = cache.k[layer, :, :, : start + T], cache.v[layer, :, :, : start + T]
        dropout = self.dropout if self.training else 0.0
        dtype = attention_dtype(x.device.type, self.c_attn.weight.dtype)  # fp32 on the CPU (precision.py)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        with autocast_off(x.device.type):  # in `dtype`, whatever autocast would pick
            if attn_mask is None:
                assert first == 0, ("queries from `first` on need an explicit mask "
                                    "(is_causal aligns them top-left)")
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
            else:
                mask = attn_mask[:, :, first:]
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T - first, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        h = fast.gelu(h) if FAST_GELU else F.gelu(h, approximate="tanh")  # GPT-2's tanh GELU
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, attn_mask=None, cache=None, layer=0, first=0, rope=None):
        x = x[:, first:] + self.attn(self.ln_1(x), attn_mask, cache, layer, first, rope)  # (B, T - first, C)
        return x + self.mlp(self.ln_2(x))


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a (B, T) mask (0 for an all-zero row)."""
    T = mask.shape[1]
    m = mask.to(torch.long)
    return (T - 1 - m.flip(1).argmax(dim=1)) * m.any(dim=1)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {cfg.head!r}")
        if cfg.pos_embedding not in ("learned", "rope"):
            raise ValueError(f"pos_embedding must be 'learned' or 'rope', got {cfg.pos_embedding!r}")
        if cfg.pos_embedding == "rope" and (cfg.n_embd // cfg.n_head) % 2:
            raise ValueError(f"rotary positions need an even head size, got {cfg.n_embd // cfg.n_head}")
        self.config = cfg
        if cfg.vocab_multiple < 1:
            raise ValueError(f"vocab_multiple must be at least 1, got {cfg.vocab_multiple}")
        # the padded rows draw no random numbers (here or in _init_weights): a seed gives the same weights
        # as it would an unpadded model, whose nn.Embedding(vocab_size, d) drew vocab_size x d normals here
        wte = torch.zeros(cfg.padded_vocab, cfg.n_embd)
        nn.init.normal_(wte[: cfg.vocab_size])
        self.wte = nn.Embedding(cfg.padded_vocab, cfg.n_embd, _weight=wte)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_embedding == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        if cfg.head != "lm":
            self.score = nn.Linear(cfg.n_embd, 1)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.head != "lm":
            self.reset_head()

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            # wte: only the real tokens' rows are drawn (the same draws as an unpadded model); padding is 0
            rows = self.config.vocab_size if m is self.wte else m.num_embeddings
            nn.init.normal_(m.weight[:rows], mean=0.0, std=0.02)
            nn.init.zeros_(m.weight[rows:])

    def reset_head(self):
        """Reward/value head init: weight N(0, 1/√(d+1)), bias 0 (lm-human-preferences; Stiennon et al.)."""
        nn.init.normal_(self.score.weight, std=1.0 / math.sqrt(self.config.n_embd + 1))
        nn.init.zeros_(self.score.bias)

    def num_params(self) -> int:
        """Parameters counted once (tied embeddings), learned position embeddings included, the padded
        embedding rows not (no token reads them and no logit of theirs is used: they never learn)."""
        padding = (self.config.padded_vocab - self.config.vocab_size) * self.config.n_embd
        return sum(p.numel() for p in self.parameters()) - padding

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The output layer's rows of real tokens (V, d): tied to the input embedding, as GPT-2. The fused
        log-prob paths take it (logprobs.py), so they never see a padded row."""
        return self.wte.weight[: self.config.vocab_size]

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of hidden states h (..., d): the matmul over all padded_vocab rows (the aligned
        shape), then the padded columns cut off, so they are never sampled or scored."""
        return F.linear(h, self.wte.weight)[..., : self.config.vocab_size]

    # ------------------------------------------------------------------------------------------------
    def hidden_states(self, idx, attention_mask=None, cache: KVCache | None = None,
                      first: int = 0) -> torch.Tensor:
        """Final-LayerNorm hidden states (B, T - first, n_embd) of tokens `idx` (B, T) at positions
        first…"""
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.config.block_size}")
        if attention_mask is None and first > 0:
            # is_causal would align the fewer queries of the last block top-left: use an explicit causal mask
            attention_mask = torch.ones(B, T, dtype=torch.bool, device=idx.device)
        if attention_mask is None and cache is None:
            pos = torch.arange(T, device=idx.device).unsqueeze(0)
            attn_mask = None  # plain causal attention: the fast path
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, T, dtype=torch.bool, device=idx.device)
            attention_mask = attention_mask.bool()
            start = cache.next_pos.unsqueeze(1) if cache is not None else 0
            pos = (start + attention_mask.long().cumsum(1) - 1).clamp(min=0)  # left padding keeps positions
            keys = attention_mask
            if cache is not None:
                cache.key_mask[:, past : past + T] = attention_mask
                keys = cache.key_mask[:, : past + T]
                cache.next_pos = pos[:, -1] + 1
            q_idx = torch.arange(T, device=idx.device).view(T, 1) + past
            k_idx = torch.arange(past + T, device=idx.device).view(1, past + T)
            causal = k_idx <= q_idx  # (T, L)
            # A padded query attends at least to itself, so no softmax row is empty (no NaN); its output
            # is never read.
            attn_mask = (causal & keys[:, None, :]) | (k_idx == q_idx)  # (B, T, L)
            attn_mask = attn_mask.unsqueeze(1)  # (B, 1, T, L)
        rope = None
        if self.wpe is not None:
            x = self.drop(self.wte(idx) + self.wpe(pos))
        else:
            x, rope = self.drop(self.wte(idx)), self.rope_angles(pos)
        for i, block in enumerate(self.h):
            # `first`: the positions before it feed no loss; only the last block may skip them (every block
            # needs the keys and values of all positions)
            x = block(x, attn_mask, cache, i, first if i == len(self.h) - 1 else 0, rope)
        if cache is not None:
            cache.length = past + T
        return self.ln_f(x)

    def rope_angles(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of position × frequency, (B or 1, 1, T, head_dim/2), for positions `pos`
        (B or 1, T)."""
        hd = self.config.n_embd // self.config.n_head
        freq = self.config.rope_base ** (-torch.arange(0, hd, 2, device=pos.device, dtype=torch.float32) / hd)
        angles = (pos.float().unsqueeze(-1) * freq).unsqueeze(1)  # (B, 1, T, hd/2), fp32 whatever the dtype
        dtype = self.wte.weight.dtype
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, idx, attention_mask=None, cache: KVCache | None = None, first: int = 0):
        """lm: logits (B, T, V); scalar: (B,) at the last real token; value: (B, T).

        first > 0 (lm and value heads): positions first… only, (B, T - first, V) or (B, T - first).
        """
        head = self.config.head
        if first and head == "scalar":
            raise ValueError("the scalar head reads the last real token: "
                             "`first` is for the lm and value heads")
        h = self.hidden_states(idx, attention_mask, cache, first)
        if head == "lm":
            return self.lm_logits(h)  # the compute dtype; log-softmaxes over it are fp32
        # the scalar/value head in fp32 under any autocast: in bf16 a reward of magnitude 2-4 would be
        # rounded to steps of 1/64, and reward differences (ranking loss, accuracy, GAE) with it
        # (precision.py)
        with autocast_off(h.device.type):
            values = self.score(h.float()).squeeze(-1)  # (B, T)
        if head == "value":
            return values
        if attention_mask is None:
            return values[:, -1]
        return values.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """A cache in the dtype attention runs in now (precision.attention_dtype: bf16 under bf16 autocast on
        a GPU, else the weights'): keys and values are stored once in it, not recast at every layer and
        step."""
        p = self.wte.weight
        dtype = attention_dtype(p.device.type, p.dtype)
        return KVCache(self.config, batch, min(max_len, self.config.block_size), p.device, dtype)

    # ------------------------------------------------------------------------------------------------
    def load_gpt2_state_dict(self, sd: dict) -> None:
        """Load a Hugging Face GPT-2 state dict (e.g. from a local `pytorch_model.bin` the user has).

        GPT-2 stores c_attn/c_proj/c_fc weights as Conv1D (in, out): transpose them for nn.Linear.
        """
        if self.wpe is None:
            raise ValueError("GPT-2 weights need pos_embedding='learned' (this model uses rotary positions)")
        own = self.state_dict()
        for k, v in sd.items():
            name = k.removeprefix("transformer.")
            if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias") or name == "lm_head.weight":
                continue  # causal-mask buffers; lm_head is tied to wte
            if name not in own:
                raise KeyError(f"GPT-2 weight {k} has no counterpart in this model")
            if any(name.endswith(s) for s in ("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                v = v.t()
            if name == "wte.weight" and v.shape[0] == self.config.vocab_size:  # GPT-2's 50,257 rows, padded
                v = torch.cat([v, v.new_zeros(own[name].shape[0] - v.shape[0], v.shape[1])])
            if own[name].shape != v.shape:
                raise ValueError(f"{k}: shape {tuple(v.shape)} != model's {tuple(own[name].shape)}")
            own[name].copy_(v)
