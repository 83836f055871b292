"""Batched sampling with a KV cache, and the log-probs of the sampled responses.

Prompts are left-padded, so every row's next token is at the same column and one forward per step
serves the whole batch; position ids come from the attention mask, so padding never shifts positions.
Sampling is ancestral from softmax(logits / temperature), optionally truncated to the top k (PPO
rollouts keep top_k = 0: truncated sampling can drive the mean k1 KL estimate negative, which the policy
exploits; TRL's docs, "how to train"). A row that has emitted EOS gets PAD from then on; generation stops
when every row has finished. The prefill runs the output layer at the last prompt position only.
One switch, FAST_SAMPLING: a token is drawn by fast.sample_inverse_cdf (one uniform per row, which
`row_seeds` need) or, off, by torch.multinomial: the same distribution, other draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanorlhf import distributed, fast
from nanorlhf.data import pad, to_device
from nanorlhf.logprobs import linear_logprobs
from nanorlhf.model import GPT
from nanorlhf.training import phase

FAST_SAMPLING = True  # fast.sample_inverse_cdf; False: torch.multinomial (V random numbers per row)
# Finished rows leave the batch (their cache rows dropped) once the rows still decoding are at most this share
# of it; 0: every row runs to the end of the longest. Why: a tiny-preset response ends after 18 of its 48
# tokens on average, so 62% of the full batch's row-steps decode padding (bench/NOTES.md). Needs the cache and
# FAST_SAMPLING (torch.multinomial's draws depend on the rows it is given).
COMPACT = 0.75


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, P + T) left-padded prompt, then the response
    attention_mask: torch.Tensor  # (B, P + T) 1 = real token (prompt and response up to its EOS)
    response: torch.Tensor  # (B, T) sampled tokens, PAD after the first EOS
    response_mask: torch.Tensor  # (B, T) 1 on response tokens up to and including the EOS
    prompt_len: int  # P: the response starts at column P
    logprobs: torch.Tensor  # (B, T) log-prob of each sampled token under the sampling distribution
    finished: torch.Tensor  # (B,) whether the row emitted EOS


@torch.no_grad()
@phase("sampling")
def generate(model: GPT, prompts: list[list[int]], max_new_tokens: int, eos_id: int, pad_id: int,
             temperature: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None,
             use_cache: bool = True, row_seeds: list[int] | None = None) -> Generation:
    """Sample up to `max_new_tokens` for each prompt (lists of token ids). temperature 0 = greedy.

    The randomness: one uniform per row and step, from `generator`, or with `row_seeds` from each row's own
    stream (row_uniforms), so that a row's response does not depend on the batch or process it is in.
    use_cache=False recomputes the whole prefix every step (for the benchmark and the equality test).
    """
    if row_seeds is not None and not FAST_SAMPLING:
        raise ValueError("row_seeds give each row one uniform per step: they need FAST_SAMPLING")
    device = model.wte.weight.device
    B = len(prompts)
    idx = to_device(pad(prompts, pad_id, left=True), device)  # (B, P)
    P = idx.shape[1]
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    mask = torch.arange(P, device=device).unsqueeze(0) >= (P - lengths).unsqueeze(1)  # (B, P)
    max_new_tokens = min(max_new_tokens, model.config.block_size - P)
    uniforms = row_uniforms(row_seeds, max_new_tokens).to(device) if row_seeds is not None else None
    if use_cache:
        cache = model.new_cache(B, P + max_new_tokens)
        h = model.hidden_states(idx, mask, cache, first=P - 1)[:, -1]  # (B, d): the last position predicts
        logits = model.lm_logits(h)  # (B, V), not (B, P, V): no other position is sampled from
    else:
        logits = model(idx, mask)[:, -1]  # (B, V) of the full (B, P, V): the plain way
    done = torch.zeros(B, dtype=torch.bool, device=device)
    response = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, max_new_tokens, device=device)
    # rows: the batch rows still decoded, in the cache's order; COMPACT drops the finished ones from it
    rows, compact = torch.arange(B, device=device), COMPACT and use_cache and FAST_SAMPLING
    steps = 0
    for t in range(max_new_tokens):
        if uniforms is not None:
            u = uniforms[rows, t : t + 1]
        else:  # B uniforms whatever the rows left: the generator's stream is the same as without COMPACT
            u = torch.rand(B, 1, generator=generator, dtype=torch.float64, device=device)[rows]
        nxt, logp = _sample(logits.float(), temperature, top_k, u, generator)
        ended = done[rows]  # rows in the batch that had finished before this step (COMPACT off, or not yet)
        nxt = torch.where(ended, pad_id, nxt)
        response[rows, t] = nxt
        logprobs[rows, t] = torch.where(ended, 0.0, logp)
        done[rows] = ended | (nxt == eos_id)
        steps = t + 1
        if done.all() or t == max_new_tokens - 1:
            break
        live = ~done[rows]
        if compact and int(live.sum()) <= COMPACT * len(rows):
            keep = live.nonzero().squeeze(1)
            rows, nxt = rows[keep], nxt[keep]
            cache.keep_rows(keep)
        step_mask = torch.ones(len(rows), 1, dtype=torch.bool, device=device)
        if use_cache:
            logits = model(nxt.unsqueeze(1), step_mask, cache)[:, -1]
        else:
            full = torch.cat([idx, response[:, :steps]], 1)
            full_mask = torch.cat([mask, torch.ones(B, steps, dtype=torch.bool, device=device)], 1)
            logits = model(full, full_mask)[:, -1]
    response, logprobs = response[:, :steps], logprobs[:, :steps]  # (B, T)
    response_mask = response_mask_from(response, eos_id)
    gen = Generation(
        tokens=torch.cat([idx, response], 1),
        attention_mask=torch.cat([mask, response_mask.bool()], 1),
        response=response,
        response_mask=response_mask,
        prompt_len=P,
        logprobs=logprobs * response_mask,
        finished=done,
    )
    return gen


def row_uniforms(seeds: list[int], n: int) -> torch.Tensor:
    """(B, n) float64 uniforms in [0, 1) on the CPU, row b drawn from its own generator seeded seeds[b]."""
    rows = [torch.rand(n, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    return torch.stack(rows) if rows else torch.zeros(0, n, dtype=torch.float64)


def row_seed(seed: int, index: int) -> int:
    """The sampling seed of item `index` of a list sampled with `seed` (a multiplicative hash, so that
    neighbouring seeds and indices give unrelated streams)."""
    return (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 1) % 2**63


def _sample(logits: torch.Tensor, temperature: float, top_k: int, u: torch.Tensor, generator=None):
    """One token per row from softmax(logits / T) (top-k truncated if top_k > 0), and its log-prob;
    u: (B, 1) uniforms in [0, 1), one per row (FAST_SAMPLING; off, torch.multinomial draws from `generator`).
    """
    if temperature == 0:
        nxt = logits.argmax(-1)
        return nxt, torch.zeros_like(nxt, dtype=torch.float)
    if temperature != 1.0:  # (at T = 1 the division would only copy the (B, V) logits)
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logp_all = F.log_softmax(logits, dim=-1)  # (B, V)
    probs = logp_all.exp()
    if FAST_SAMPLING:
        nxt = fast.sample_inverse_cdf(probs, u=u)
    else:
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return nxt, logp_all.gather(1, nxt.unsqueeze(1)).squeeze(1)


def response_mask_from(response: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) float mask: 1 on tokens up to and including the first EOS, 0 after it.

    response (B, T): the sampled token ids; eos_id: the id that ends a response.

    Position, not token id, decides: a sampled token is real even if it happens to be the PAD id.
    """
    is_eos = (response == eos_id).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0  # strictly after the first EOS
    return (~after_eos).float()


def response_logprobs(model: GPT, tokens, attention_mask, prompt_len: int, temperature: float = 1.0,
                      with_entropy: bool = False, impl: str | None = None, entropy_grad: bool = False,
                      fast: bool = True):
    """Log-probs (B, T) (and entropies) of the response tokens tokens[:, P:] under `model` at `temperature`.

    tokens (B, P + T): left-padded prompts then responses; attention_mask (B, P + T), 1 = a real token (0 at
    the prompts' left padding and at the PAD after EOS); prompt_len = P. with_entropy: return (logp, entropy).
    impl: the log-prob implementation, 'torch' | 'triton' | None (logprobs.py picks).

    Alignment: the hidden state at column t predicts token t + 1 (a causal LM's shift), so the response
    tokens are scored by hidden states P−1 … P+T−2; prompt positions no loss reads are never sent
    through the output layer. The fused path never materialises the (B, T, V) logits (see logprobs.py).
    The last block runs only at positions P−1… (hidden_states' `first`), the only ones read here.
    The entropy is for logging (train_ppo's `entropy` column): it carries no gradient, which spares the
    backward its full-vocabulary work. An entropy bonus in a loss needs entropy_grad=True.
    fast=False: the plain way, every position through every block and the reference log-prob path
    (tests/test_fast_paths.py pins the two together).
    """
    if fast:
        h = model.hidden_states(tokens, attention_mask, first=prompt_len - 1)[:, :-1]  # (B, T, d)
    else:
        h = model.hidden_states(tokens, attention_mask)[:, prompt_len - 1 : -1]  # (B, T, d)
    targets = tokens[:, prompt_len:]
    mask = attention_mask[:, prompt_len:].float()
    return linear_logprobs(h, model.lm_head_weight, targets, temperature=temperature, mask=mask,
                           with_entropy=with_entropy, entropy_grad=entropy_grad, impl=impl, fast=fast)


def sample_batch(device) -> int:
    """Prompts decoded together by default: 256 on a CPU, where a decoding step of the tiny model pays a
    fixed Python and dispatch cost whatever its number of rows (512 tiny-preset prompts: 1.46 s at
    256 against 1.81 s at 64 in bf16, 1.70 against 1.96 s in fp32, the same texts; bench/NOTES.md); 512 on
    a GPU, where one step is bound by its ~100 kernel launches and more rows come nearly free."""
    return 512 if torch.device(device).type == "cuda" else 256


@torch.no_grad()
def sample_responses(model: GPT, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
                     top_k: int = 0, batch_size: int = 0, seed: int = 0,
                     prefix_ids=()) -> list[tuple[str, bool]]:
    """Decoded (response, finished) for each prompt string, via the chat template, in batches.

    Prompt i is sampled from its own random stream, row_seed(seed, i): its response is the same whatever
    the batch size and however many processes share the list (evaluations agree across machines).

    `prefix_ids` (e.g. few-shot examples in the chat format) are prepended to every prompt's ids that they
    fit beside: cutting the prefix mid-example would show the model a broken example, so a prompt too long
    for both gets none (and a prompt too long alone keeps its end). batch_size 0: sample_batch(the device).
    Precision is the caller's: the stages call it inside precision.autocast, so that samples that feed
    training or evaluation come from the regime the model trains in.
    """
    batch_size = batch_size or sample_batch(model.wte.weight.device)
    index = distributed.shard(range(len(prompts)))  # under torchrun each rank samples its block (gathered)
    prompts = distributed.shard(prompts)
    was_training = model.training
    model.eval()
    pre, budget = list(prefix_ids), model.config.block_size - max_new_tokens
    ids = [tokenizer.prompt_ids(p) for p in prompts]
    ids = [pre + x if len(pre) + len(x) <= budget else x[-budget:] for x in ids]
    # batches of prompts of similar length: a batch is left-padded to its longest prompt, and every decoding
    # step attends over that padding too (bench/NOTES.md); a row's response does not depend on its batch
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    results = [None] * len(ids)
    for i in range(0, len(order), batch_size):
        part = order[i : i + batch_size]
        gen = generate(model, [ids[j] for j in part], max_new_tokens, tokenizer.eos_id, tokenizer.pad_id,
                       temperature, top_k, row_seeds=[row_seed(seed, index[j]) for j in part])
        for j, row in zip(part, gen.response.tolist()):
            results[j] = tokenizer.response_text(row)
    model.train(was_training)
    return distributed.gather(results)
