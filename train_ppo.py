r"""Step 4 of InstructGPT: optimise the policy against the reward model with PPO.

    python train_ppo.py                        # policy out/sft, reward model out/rm -> out/ppo/
    python train_ppo.py --ptx_coef=1.0         # PPO-ptx: plus the pretraining loss  -> out/ppo_ptx/
    python train_ppo.py --reward=gold --run_name=ppo_gold    # the gold labeler as reward: the RM's ceiling
    python train_ppo.py --init_kl_coef=0 --adaptive_kl=false --lr_scale=8.0 \
        --run_name=ppo_beta0 --eval_interval=5                # no KL penalty: reward hacking (the pipeline's)

InstructGPT eq. 2, in steps 1 rollout, 2 score, 3 KL-shaped rewards, 4 GAE (`rollout`), 5 `ppo_update`, 6 log:
    max_φ E_(x,y)~π_φ[r_θ(x, y) − β log(π_φ(y|x) / π_SFT(y|x))] + γ E_x~D_pretrain[log π_φ(x)].
Departures: 1) per-token KL (k1), as N+ / TRL; 2) a response that never ends has its reward lowered by
`missing_eos_penalty` (newer TRL), not replaced; 3) advantages are whitened per batch. Maths: nanorlhf/ppo.py.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from nanorlhf import distributed, ppo
from nanorlhf.checkpoint import (CheckpointError, check_run_name, checkpoint_tokenizer, load_model,
                                 load_policy, save_checkpoint, stage_path, trained_dtype)
from nanorlhf.config import (AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT, check_config, check_context, one_of,
                             parse_config, run_main)
from nanorlhf.data import corpus_tokens, lm_batches, load_world, read_prompts, to_device
from nanorlhf.evaluation import format_eval, gold_eval
from nanorlhf.files import atomic_write, lock_folder, with_locks
from nanorlhf.generate import generate, response_logprobs
from nanorlhf.losses import masked_mean, sft_loss
from nanorlhf.report import ppo_curves
from nanorlhf.training import (Progress, autocast, by_length, check_finite, chunk_rows, length_chunks,
                               make_optimizer, phase, phase_summary, resolve_dtype, seed_everything)

GOLD_MIDPOINT = 4.0  # the middle of the labeler's 1-7 rating scale: gold rewards centred like the RM's
RM_SCORE_WINDOW = 3  # rollouts whose mean RM score sits beside each gold evaluation (one batch is noisy)
EVAL_SEED_OFFSET = 1  # the evaluations sample with seed + 1, apart from the rollouts (eval.py's offset too)
ADAM_BETAS = (0.9, 0.95)  # InstructGPT's Adam β1, β2 for every model
ADAM_EPS = 1e-5  # OpenAI baselines' PPO value (cleanrl's ppo.py too), not torch's 1e-8
WEIGHT_DECAY = 0.0  # none: the KL penalty is what holds the policy near SFT


# ---------------------------------------------------------------------------------------------- config
@dataclass
class Config:
    """One field per flag, grouped by the step they set. The checkpoints store asdict(cfg): moving a field
    changes their bytes."""
    # what to read and where to write
    preset: str = "tiny"  # micro (seconds: tests) | tiny (2-core CPU) | small (one GPU); default: by device
    data_dir: str = "data"  # where data/prepare.py wrote the prompts, corpus and tokenizer
    out_dir: str = "out"  # reads out_dir/sft and out_dir/rm; writes out_dir/<run_name>/
    run_name: str = ""  # output folder under out_dir (default: ppo, or ppo_ptx when ptx_coef > 0)
    policy_from: str = ""  # default out_dir/sft/ckpt.pt (also the frozen reference)
    reward_from: str = ""  # default out_dir/rm/ckpt.pt (also the critic's initialisation)
    continue_from: str = ""  # start the policy from this PPO checkpoint (iterated RLHF); reference stays SFT
    reward: str = "model"  # model | gold: the gold labeler scores, a perfect reward model (gold_reward)
    # rollout (step 1)
    iterations: int = 60  # PPO iterations: rollout, score, update
    rollout_batch: int = 64  # prompts per iteration (episodes)
    max_new_tokens: int = 48  # longest sampled response, in tokens
    temperature: float = 1.0  # sampling AND log-prob temperature (must match)
    # update (step 5)
    ppo_epochs: int = 4  # passes over each rollout batch (InstructGPT: 1, Stiennon et al.: 4)
    minibatch_size: int = 16  # episodes per gradient step of the update
    lr: float = 3e-5  # the policy's learning rate (AdamW, constant)
    lr_scale: float = 1.0  # multiplies lr (the pipeline's β = 0 run: 4, to drift within the same iterations)
    critic_lr: float = 1e-4  # the critic's (value network's) learning rate
    clip: float = 0.2  # policy ratio clip ε
    value_clip: float = 0.2  # clipped value loss: the worse of V and the rollout's value ± value_clip
    vf_coef: float = 0.1  # weight of the value loss beside the policy loss
    # advantages (step 4)
    gamma: float = 1.0  # discount γ of GAE (1: the reward at the end counts in full at every token)
    lam: float = 0.95  # GAE's λ: 0 is one-step TD, 1 the Monte-Carlo return
    # reward and KL penalty (steps 2-3)
    init_kl_coef: float = 0.05  # β, the KL penalty's weight (InstructGPT eq. 2); its start if adaptive
    adaptive_kl: bool = True  # Ziegler et al. 2019 controller: β steers the KL towards kl_target
    kl_target: float = 4.0  # nats per response
    kl_horizon: int = 1000  # β moves by at most 20% × rollout_batch/horizon per iteration
    missing_eos_penalty: float = 1.0  # subtracted from the RM score of responses that never end
    whiten_rewards: bool = False  # scale the shaped rewards to unit variance, mean kept (OAI's), before GAE
    # PPO-ptx (InstructGPT eq. 2's pretraining term)
    ptx_coef: float = 0.0  # γ of PPO-ptx; 0 = plain PPO
    ptx_batch: int = 8  # corpus sequences per minibatch for the ptx term
    # update details (step 5)
    grad_clip: float = 1.0  # the policy's and the critic's gradient norms are each clipped to this
    reuse_rollout_logprobs: bool = True  # the sampler's log-probs are π_old (no second policy forward)
    # evaluation and logging (step 6)
    eval_interval: int = 10  # gold-labeler evaluation every N iterations (0: only at the end)
    eval_prompts: int = 100  # held-out prompts of each gold-labeler evaluation
    eval_temperature: float = 0.7  # their sampling temperature (eval.py's: the curves and the table agree)
    log_interval: int = 1  # print one line of PPO statistics every N iterations
    # system
    device: str = ""  # cpu | cuda | cuda:N (default: cuda if available)
    dtype: str = "auto"  # auto | fp32 | bf16 compute (nanorlhf/precision.py); auto: bf16 where it pays
    seed: int = 1337  # seeds torch, the prompt order and sampling: same seed, same device -> same bits


PRESETS = {
    "micro": dict(iterations=3, rollout_batch=8, max_new_tokens=12, minibatch_size=4, ppo_epochs=2,
                  eval_interval=0, eval_prompts=8, ptx_batch=2),
    # tiny: 2 PPO epochs (InstructGPT used 1, Stiennon 4) halve the update's time on a 2-core CPU.
    # β from 0.1 towards a KL of 3 nats, 20 iterations, lr 5e-5: the 1M-parameter RM is over-optimised past
    # that (more KL, more iterations or a higher lr: more refusals of allowed requests and lower gold
    # win-rates); the gold rating gains most in the first 10-20 iterations (the numbers: bench/NOTES.md,
    # "Preset choices" and "A pipeline in ten minutes").
    "tiny": dict(iterations=20, ppo_epochs=2, lr=5e-5, init_kl_coef=0.1, kl_target=3.0),
    "small": dict(iterations=200, rollout_batch=256, minibatch_size=64, lr=1e-5, critic_lr=3e-5,
                  eval_interval=20, eval_prompts=400),
}


def get_config(argv=None) -> Config:
    cfg = parse_config(Config, argv, PRESETS)
    check_config(cfg, reward=one_of("model", "gold"), iterations=AT_LEAST_1, rollout_batch=AT_LEAST_1,
                 max_new_tokens=AT_LEAST_1, temperature=POSITIVE, eval_temperature=POSITIVE,
                 ppo_epochs=AT_LEAST_1, minibatch_size=AT_LEAST_1,
                 lr=POSITIVE, lr_scale=POSITIVE, critic_lr=POSITIVE, clip=POSITIVE, value_clip=POSITIVE,
                 vf_coef=NON_NEGATIVE, gamma=(lambda g: 0 < g <= 1, "a number in (0, 1]"), lam=UNIT,
                 init_kl_coef=NON_NEGATIVE, kl_target=POSITIVE, kl_horizon=AT_LEAST_1, ptx_coef=NON_NEGATIVE,
                 ptx_batch=AT_LEAST_1, grad_clip=POSITIVE, eval_interval=NON_NEGATIVE,
                 eval_prompts=AT_LEAST_1, log_interval=AT_LEAST_1)
    if cfg.run_name:  # never the folder of a stage PPO reads (sft, rm) or of any other stage
        check_run_name("run_name", cfg.run_name)
    return cfg


# ---------------------------------------------------------------------------------------------- models
def load_models(policy_path: str, reward_path: str, data_dir: str, device: str, continue_from: str = ""):
    """The four models: the policy (init SFT, or a PPO policy to continue), the frozen reference (SFT) and
    reward model (RM), and the critic (a value head on the RM's trunk, Stiennon et al. 2020). Every checkpoint
    must use the data's tokenizer. Returns them, the SFT checkpoint (PPO's checkpoints carry its tokenizer)
    and the tokenizer."""
    tok_file = str(Path(data_dir) / "tokenizer.tiktoken")  # the data's: both models must use it
    ref, sft_ckpt = load_model(policy_path, "sft", device=device, tokenizer=tok_file)
    policy = load_policy(continue_from, device, tok_file)[0] if continue_from else copy.deepcopy(ref)
    reward_model, _ = load_model(reward_path, "rm", device=device, tokenizer=tok_file)
    if reward_model.config.block_size < policy.config.block_size:  # it scores the policy's whole sequences
        raise CheckpointError(f"{reward_path}: a reward model with a {reward_model.config.block_size}-token "
                              f"context, shorter than the policy's {policy.config.block_size} "
                              f"({policy_path}); expected one trained from that policy (python train_rm.py)")
    critic, _ = load_model(reward_path, "rm", head="value", device=device)
    for m in (ref, reward_model):
        m.eval().requires_grad_(False)
    return policy, ref, reward_model, critic, sft_ckpt, checkpoint_tokenizer(sft_ckpt, policy_path)


# --------------------------------------------------------------------------- reward functions (step 2)
def model_reward(reward_model):
    """The frozen reward model's score of each rollout row, read at its last real token (the EOS); rows of
    similar length scored together (training.by_length)."""
    def score(gen):
        mask = gen.attention_mask
        return by_length(reward_model, mask, chunk_rows(mask.device), gen.tokens, mask)
    return score


def gold_reward(labeler, tok, prompts: list[str]):
    """A perfect reward model for one batch of prompts: the gold labeler's utility of each response, in
    rating units centred on the middle of the 1-7 scale (its spread on SFT samples is close to the RM's, so
    β means about the same: bench/NOTES.md). Not RLHF -- no one has the gold labeler -- but the ceiling of
    what reward-model training could give: `--reward=gold` separates "the RM is wrong" from "the policy
    cannot do better" (cf. Gao et al. 2022's gold reward model). No planted bias: judge(), not rank()."""
    def score(gen):
        texts = [tok.response_text(row) for row in gen.response.tolist()]
        u = [labeler.judge(p, text, finished).utility - GOLD_MIDPOINT
             for p, (text, finished) in zip(prompts, texts)]
        return torch.tensor(u, device=gen.tokens.device)
    return score


# ------------------------------------------------------------------------------------- 1-4: experience
@dataclass
class Experience:
    """One rollout batch: B episodes, P prompt columns (left-padded), T response columns (right-padded)."""
    tokens: torch.Tensor  # (B, P + T) prompt then response token ids
    attn: torch.Tensor  # (B, P + T) 1 = a real token (prompt, and response up to its EOS), 0 = padding
    P: int  # prompt columns: response token t is column P + t
    mask: torch.Tensor  # (B, T) 1 on response tokens up to and including the EOS
    logprobs: torch.Tensor  # (B, T) log π_old of each response token (fp32)
    ref_logprobs: torch.Tensor  # (B, T) log π_ref, the frozen SFT model (fp32)
    values: torch.Tensor  # (B, T) the critic's V(s_t) at the rollout: the state before response token t
    returns: torch.Tensor  # (B, T) GAE's returns, advantages + values: the critic's targets
    advantages: torch.Tensor  # (B, T) GAE's advantages, whitened over the batch's valid tokens
    scores: torch.Tensor  # (B,) each response's reward (RM or gold), less missing_eos_penalty if unended
    finished: torch.Tensor  # (B,) bool: the response emitted EOS
    kl: torch.Tensor  # (B, T) log π_old − log π_ref per token, 0 at padding

    def rows(self, idx) -> Experience:
        """The episodes `idx` (row numbers, or a slice) of every tensor."""
        return replace(self, **{k: v[idx] for k, v in vars(self).items() if isinstance(v, torch.Tensor)})


@torch.no_grad()
def rollout(policy, ref, critic, reward_fn, prompt_ids: list[list[int]], tok, cfg: Config, kl_coef: float,
            generator) -> Experience:
    """Steps 1-4: sample responses, score them, shape rewards with the KL penalty, compute advantages."""
    device = policy.wte.weight.device
    policy.eval()
    with autocast(device, cfg.dtype):
        # 1. rollout: ancestral sampling at cfg.temperature (no top-k: it would bias the KL estimate)
        gen = generate(policy, prompt_ids, cfg.max_new_tokens, tok.eos_id, tok.pad_id, cfg.temperature,
                       top_k=0, generator=generator)
        tokens, attn, P, mask = gen.tokens, gen.attention_mask, gen.prompt_len, gen.response_mask
        # 2. score: reward model at the last real token; per-token log-probs of π_old, π_ref; values
        scores = reward_fn(gen).float()
        scores = torch.where(gen.finished, scores, scores - cfg.missing_eos_penalty)
        # in chunks of rows of similar length (training.length_chunks), each cut to its own columns: the
        # numbers of one piece to fp32 rounding, with far less padding (a tiny-preset rollout is half
        # padding: left-padded prompts, responses ending anywhere); padding columns are never read
        reuse = cfg.reuse_rollout_logprobs
        logprobs = gen.logprobs.float() if reuse else torch.zeros(mask.shape, device=device)
        ref_logprobs, values = torch.zeros_like(logprobs), torch.zeros_like(logprobs)
        for idx, _ in length_chunks(mask, chunk_rows(device)):
            first, T_c = _used_columns(attn[idx], mask[idx], P)
            x, a, p = tokens[idx, first : P + T_c], attn[idx, first : P + T_c], P - first
            if not reuse:
                logprobs[idx, :T_c] = response_logprobs(policy, x, a, p, cfg.temperature).float()
            ref_logprobs[idx, :T_c] = response_logprobs(ref, x, a, p, cfg.temperature).float()
            values[idx, :T_c] = critic(x, a, first=p - 1)[:, :-1].float()  # V(s_t): the state before token t
    # 3. per-token reward: −β·(log π − log π_ref) at each token, the RM score added at the EOS
    rewards, kl = ppo.kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, kl_coef)
    if cfg.whiten_rewards:
        rewards = ppo.masked_whiten(rewards, mask, shift_mean=False,
                                    moments=distributed.masked_moments(rewards, mask))
    # 4. GAE over response tokens; advantages whitened over the valid tokens of the batch
    advantages, returns = ppo.gae(rewards, values, mask, cfg.gamma, cfg.lam)
    # (under torchrun: with the mean and variance of every rank's batch, so all whiten alike)
    advantages = ppo.masked_whiten(advantages, mask, moments=distributed.masked_moments(advantages, mask))
    return Experience(tokens=tokens, attn=attn, P=P, mask=mask, logprobs=logprobs, ref_logprobs=ref_logprobs,
                      values=values, returns=returns, advantages=advantages, scores=scores,
                      finished=gen.finished, kl=kl)


# ------------------------------------------------------------------------------------------- 5: update
def ptx_loss(policy, batch, device: str, dtype: str) -> torch.Tensor:
    """PPO-ptx, InstructGPT eq. 2's last term before its γ: the policy's next-token loss on one corpus batch,
    −1/N Σ log π_φ(x_{t+1} | x_≤t) over the N tokens it counts (a token mean, as in pretraining).

    policy: the GPT being trained (the loss must reach its gradient); batch: (inputs, targets, mask), each
    (B, T) on the CPU, targets the inputs shifted by one and mask 1 where a target counts; device: where
    the policy is; dtype: the compute precision (fp32 | bf16) of the policy's forward."""
    x, y, m = (to_device(t, device) for t in batch)
    with autocast(device, dtype):
        return sft_loss(policy(x), y, m)


def ppo_update(policy, critic, opt_policy, opt_critic, exp: Experience, cfg: Config, ptx_batches=None,
               rng=None, iteration: int = 0, ckpt_path: Path = Path("none")):
    """Step 5: `ppo_epochs` passes over the batch in minibatches (a fresh permutation each epoch).

    policy, critic and their optimizers opt_policy, opt_critic; exp: the rollout's Experience; cfg: the
    Config (cfg.ptx_coef is gamma of PPO-ptx); ptx_batches: for PPO-ptx, an iterator of corpus batches
    (inputs, targets, mask), one drawn per minibatch; rng: a random.Random for the minibatch order.
    `iteration` and `ckpt_path` are for the message if the loss stops being finite."""
    device = policy.wte.weight.device
    policy.train(), critic.train()  # dropout is 0 in every RLHF model: train mode changes nothing numerically
    B = exp.tokens.shape[0]
    stats = []
    gen = torch.Generator().manual_seed(rng.randrange(2**31) if rng else 0)
    for _ in range(cfg.ppo_epochs):
        for idx in torch.randperm(B, generator=gen).split(cfg.minibatch_size // distributed.world_size()):
            mb = _minibatch(exp, idx.to(device))
            with autocast(device, cfg.dtype):
                logprobs, entropy = response_logprobs(policy, mb.tokens, mb.attn, mb.P, cfg.temperature,
                                                      with_entropy=True)
                values = critic(mb.tokens, mb.attn, first=mb.P - 1)[:, :-1].float()  # no prompt-position work
            pg_loss, pg_stats = ppo.policy_loss(logprobs, mb.logprobs, mb.advantages, mb.mask, cfg.clip)
            vf_loss, vf_stats = ppo.value_loss(values, mb.values, mb.returns, mb.mask, cfg.value_clip)
            # weighted by this rank's share of the minibatch's tokens: the ranks' mean is the global one
            loss = (pg_loss + cfg.vf_coef * vf_loss) * distributed.local_share(mb.mask.sum())
            if cfg.ptx_coef > 0:  # PPO-ptx: + γ · the pretraining loss on a batch (InstructGPT eq. 2)
                ptx = ptx_loss(policy, next(ptx_batches), device, cfg.dtype)
                loss = loss + cfg.ptx_coef * ptx
            opt_policy.zero_grad(set_to_none=True), opt_critic.zero_grad(set_to_none=True)
            loss.backward()
            distributed.sync_grads(policy, critic)  # by hand: the loss reaches the trunk around forward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.grad_clip)
            opt_policy.step(), opt_critic.step()
            row = {"loss": loss, "pg_loss": pg_loss, "vf_loss": vf_loss, **pg_stats, **vf_stats,
                   "entropy": masked_mean(entropy.float(), mb.mask),
                   "ptx_loss": ptx if cfg.ptx_coef > 0 else loss.new_zeros(())}
            stats.append(torch.stack([v.detach().float() for v in row.values()]))
    # Read back once per update, not with an .item() per number per minibatch: each .item() makes the CPU
    # wait for the GPU to finish everything queued (~16 waits a minibatch). So a NaN is found here, after
    # the epochs: the weights in memory may then be NaN, but nothing saves them (save_checkpoint refuses
    # non-finite weights) and the run stops with the minibatch where the loss first blew up.
    table = torch.stack(stats).tolist()  # (minibatches, columns)
    for i, values in enumerate(table):
        check_finite("PPO loss", values[0], f"iteration {iteration}, minibatch {i + 1}", ckpt_path)
    return {k: sum(values[j] for values in table) / len(table) for j, k in enumerate(row) if k != "loss"}


def _minibatch(exp: Experience, idx) -> Experience:
    """Rows `idx` of the experience, with columns that are padding in every chosen row cut away."""
    mb, P = exp.rows(idx), exp.P
    first, T_used = _used_columns(mb.attn, mb.mask, P)
    per_token = {k: getattr(mb, k)[:, :T_used]
                 for k in ("mask", "logprobs", "ref_logprobs", "values", "returns", "advantages", "kl")}
    return replace(mb, tokens=mb.tokens[:, first : P + T_used], attn=mb.attn[:, first : P + T_used],
                   P=P - first, **per_token)


def _used_columns(attn, mask, P: int) -> tuple[int, int]:
    """(first, T_used) of rows whose attention mask is `attn` (B, P + T) and response mask `mask` (B, T): the
    leading prompt columns that are padding in every row, and the response columns up to the last counted."""
    first = int(attn[:, :P].any(0).float().argmax())
    T_used = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
    return first, T_used


# ------------------------------------------------------------------------------ 6: log, evaluate, save
def iteration_row(it: int, exp: Experience, upd: dict, beta: float) -> dict:
    """Step 6: one iteration's numbers that diagnose RLHF (reward, KL as k1 and k3, β, response length, EOS
    rate, the critic's explained variance) and the update's statistics."""
    kls = ppo.kl_estimators(exp.logprobs, exp.ref_logprobs, exp.mask)
    return {"iteration": it, "rm_score": exp.scores.mean().item(), "kl": kls["k1"].item(),
            "kl_k3": kls["k3"].item(), "beta": beta, "resp_len": exp.mask.sum(1).mean().item(),
            "eos_rate": exp.finished.float().mean().item(),
            "explained_var": ppo.explained_variance(exp.values, exp.returns, exp.mask), **upd}


def gold_evaluation(policy, tok, labeler, prompts: list[dict], cfg: Config, device: str, history: list[dict],
                    it: int, name: str) -> tuple[dict, dict]:
    """The gold labeler's judgement of the policy's samples for held-out prompts, and its row of the
    evaluations: the gold rating beside the latest KL and the RM reward of the last RM_SCORE_WINDOW rollouts
    (the axes of the over-optimisation plot)."""
    with autocast(device, cfg.dtype):  # sampled in the regime of the rollouts
        ev = gold_eval(policy, tok, labeler, prompts, cfg.max_new_tokens, cfg.eval_temperature,
                       cfg.seed + EVAL_SEED_OFFSET)
    recent = history[-RM_SCORE_WINDOW:]
    rm_eval = sum(h["rm_score"] for h in recent) / max(1, len(recent)) if history else None
    row = {"iteration": it, "gold_rating": ev["rating"], "correct": ev["correct"],
           "kl": history[-1]["kl"] if history else 0.0, "rm_score": rm_eval}
    print(format_eval(f"{name} iteration {it}", ev))
    return row, ev


def save_run(out: Path, policy, cfg: Config, sft_ckpt: dict, run_name: str, metrics: dict) -> None:
    """The final checkpoint, the history as json and the run's curves. The previous run's history goes as
    the checkpoint is replaced: stopped in between, the folder holds no history rather than another run's."""
    save_checkpoint(out / "ckpt.pt", policy, asdict(cfg), sft_ckpt, run_name, cfg.iterations, metrics,
                    describing=[out / "history.json"])
    atomic_write(out / "history.json", json.dumps({"history": metrics["history"], "evals": metrics["evals"]},
                                                  indent=0))
    ppo_curves(out / "ppo_curves.png", run_name, metrics["history"], metrics["evals"], cfg.reward)


# ------------------------------------------------------------------------------------------------ main
@with_locks
def main(argv=None):
    cfg = get_config(argv)
    run_name = cfg.run_name or ("ppo_ptx" if cfg.ptx_coef > 0 else "ppo")
    device = distributed.init(cfg.device)  # torchrun: join the other ranks (a no-op on one process)
    distributed.check_divisible(cfg, "rollout_batch", "minibatch_size")
    policy_path = cfg.policy_from or stage_path(cfg.out_dir, "sft")
    reward_path = cfg.reward_from or stage_path(cfg.out_dir, "rm")
    # auto -> what runs (the policy's own dtype if it records one), saved with the config
    cfg.dtype = resolve_dtype(cfg.dtype, device, trained_in=trained_dtype(policy_path))
    generator = seed_everything(cfg.seed)
    sample_gen = torch.Generator(device).manual_seed(distributed.rank_seed(cfg.seed))
    rng = random.Random(cfg.seed)
    out = Path(cfg.out_dir) / run_name
    ckpt_path = out / "ckpt.pt"
    lock_folder(out)  # one writer: a second run on the same folder is refused
    world = load_world(cfg.data_dir)

    policy, ref, reward_model, critic, sft_ckpt, tok = load_models(policy_path, reward_path, cfg.data_dir,
                                                                   device, cfg.continue_from)
    check_context(cfg, policy.config.block_size)
    train_prompts = read_prompts(cfg.data_dir, "train")
    eval_prompts = read_prompts(cfg.data_dir, "val")[: cfg.eval_prompts]
    max_prompt = policy.config.block_size - cfg.max_new_tokens
    prompt_ids = [tok.prompt_ids(p["prompt"])[-max_prompt:] for p in train_prompts]
    ptx_batches = None
    if cfg.ptx_coef > 0:
        ptx_batches = lm_batches(corpus_tokens(cfg.data_dir, tok), cfg.ptx_batch, policy.config.block_size,
                                 generator)

    opt_policy = make_optimizer(policy, cfg.lr * cfg.lr_scale, WEIGHT_DECAY, betas=ADAM_BETAS, eps=ADAM_EPS)
    opt_critic = make_optimizer(critic, cfg.critic_lr, WEIGHT_DECAY, betas=ADAM_BETAS, eps=ADAM_EPS)
    kl_ctl = (ppo.AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else ppo.FixedKLController(cfg.init_kl_coef))
    print(f"ppo[{run_name}]: policy {policy.num_params() / 1e6:.2f}M params, {cfg.iterations} iterations x "
          f"{cfg.rollout_batch} episodes, β={cfg.init_kl_coef} "
          f"({'adaptive' if cfg.adaptive_kl else 'fixed'}), "
          f"ptx γ={cfg.ptx_coef}, reward {'the gold labeler' if cfg.reward == 'gold' else reward_path}, "
          f"device {device} {cfg.dtype}")

    history, evals = [], []
    progress = Progress(cfg.iterations, f"ppo[{run_name}]")
    judge = partial(gold_evaluation, policy, tok, world.labeler, eval_prompts, cfg, device,
                    name=f"ppo[{run_name}]")
    with phase("gold evaluation"):
        evals.append(judge(history, 0)[0])
    for it in range(1, cfg.iterations + 1):
        # this rank's share of the iteration's prompts
        idx = distributed.shard([rng.randrange(len(prompt_ids)) for _ in range(cfg.rollout_batch)])
        reward_fn = (model_reward(reward_model) if cfg.reward == "model" else
                     gold_reward(world.labeler, tok, [train_prompts[i]["prompt"] for i in idx]))
        with phase("scoring"):  # rollout steps 2-4 (its step 1 counts as "sampling")
            exp = rollout(policy, ref, critic, reward_fn, [prompt_ids[i] for i in idx], tok, cfg,
                          kl_ctl.value, sample_gen)  # steps 1-4
        with phase("update"):
            upd = ppo_update(policy, critic, opt_policy, opt_critic, exp, cfg, ptx_batches, rng, it,
                             ckpt_path)  # step 5
        row = distributed.average(iteration_row(it, exp, upd, kl_ctl.value), len(idx))  # step 6, every rank's
        history.append(row)
        kl_ctl.update(row["kl"], cfg.rollout_batch)
        if it % cfg.log_interval == 0 or it == cfg.iterations:
            progress.log(it, reward=row["rm_score"], kl=row["kl"], k3=row["kl_k3"], beta=row["beta"],
                         entropy=row["entropy"], clipfrac=row["clipfrac"], approx_kl=row["approx_kl"],
                         vf_loss=row["vf_loss"], ev=row["explained_var"], len=row["resp_len"],
                         eos=row["eos_rate"])
        if cfg.eval_interval and it % cfg.eval_interval == 0 and it < cfg.iterations:
            with phase("gold evaluation"):
                evals.append(judge(history, it)[0])
            with phase("saving"):
                save_checkpoint(ckpt_path, policy, asdict(cfg), sft_ckpt, run_name, it,  # in progress: a
                                {"history": history, "evals": evals}, finished=False)  # file beside ckpt.pt
    with phase("gold evaluation"):
        row, final = judge(history, cfg.iterations)
    evals.append(row)
    # no wall time in the checkpoint: the same command writes the same bits (the pipeline's state has times)
    final_gold = {k: v for k, v in final.items() if k != "samples"}
    metrics = {"history": history, "evals": evals, "final_gold": final_gold}
    with phase("saving"):
        save_run(out, policy, cfg, sft_ckpt, run_name, metrics)
    print(f"ppo[{run_name}]: done in {progress.elapsed():.0f}s, saved {ckpt_path}")
    print(phase_summary(f"ppo[{run_name}]"))
    return metrics


if __name__ == "__main__":
    run_main(main)
