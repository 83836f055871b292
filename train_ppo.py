"""Step 4 of InstructGPT: optimise the policy against the reward model with PPO.

    python train_ppo.py                          # policy from out/sft, reward model out/rm -> out/ppo/
    python train_ppo.py --ptx_coef=1.0           # PPO-ptx: add the pretraining loss      -> out/ppo_ptx/
    python train_ppo.py --init_kl_coef=0 --adaptive_kl=false --run_name=ppo_beta0   # no KL: reward hacking
    python train_ppo.py --reward=gold --run_name=ppo_gold   # the gold labeler as reward: the RM's ceiling

Objective (InstructGPT eq. 2):
    objective(φ) = E_(x,y)~π_φ [ r_θ(x, y) − β log(π_φ(y|x) / π_SFT(y|x)) ] + γ E_x~D_pretrain [ log π_φ(x) ]
One iteration, numbered as in the algorithm box: 1 rollout, 2 score, 3 KL-shaped rewards, 4 GAE,
5 K epochs of minibatch updates, 6 log. The maths lives in nanorlhf/ppo.py as small pure functions.
Models: policy (init SFT), reference (frozen SFT), reward (frozen RM), critic (value-head GPT init from
the RM, Stiennon et al. 2020). Dropout is off everywhere and the same temperature is used for sampling
and for every log-prob, so the PPO ratio is 1 before the first update (to 1e-4 in fp32; under --dtype=bf16 the
sampler's and the update's matmuls may round differently: within 1%, tests/test_precision.py).
Departures: the KL is per token (k1) as in N+ / TRL; a response that never emits EOS gets its reward
lowered by `missing_eos_penalty` (newer TRL) rather than replaced; advantages are whitened per batch.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanorlhf import ppo
from nanorlhf.checkpoint import load_model, save_checkpoint, stage_path
from nanorlhf.config import ConfigError, parse_config, run_main
from nanorlhf.data import corpus_tokens, lm_batches, load_world, read_prompts
from nanorlhf.eval import format_eval, gold_eval
from nanorlhf.generate import generate, response_logprobs
from nanorlhf.losses import masked_mean, sft_loss
from nanorlhf.tokenizer import load_tokenizer
from nanorlhf.training import (Progress, autocast, check_finite, make_optimizer, resolve_dtype, seed_everything,
                               setup_device)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class Config:
    preset: str = "tiny"  # micro | tiny | small; default from the device
    data_dir: str = "data"
    out_dir: str = "out"
    run_name: str = ""  # output folder under out_dir (default: ppo, or ppo_ptx when ptx_coef > 0)
    policy_from: str = ""  # default out_dir/sft/ckpt.pt (also the frozen reference)
    reward_from: str = ""  # default out_dir/rm/ckpt.pt (also the critic's initialisation)
    reward: str = "model"  # model | gold: score with the gold labeler itself, a perfect reward model (see gold_reward)
    iterations: int = 60
    rollout_batch: int = 64  # prompts per iteration (episodes)
    max_new_tokens: int = 48
    temperature: float = 1.0  # sampling AND log-prob temperature (must match)
    ppo_epochs: int = 4
    minibatch_size: int = 16
    lr: float = 3e-5  # policy
    lr_scale: float = 1.0  # multiplies lr (the pipeline's β = 0 run: 4, so its drift shows in the same iterations)
    critic_lr: float = 1e-4
    clip: float = 0.2  # policy ratio clip ε
    value_clip: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    init_kl_coef: float = 0.05  # β
    adaptive_kl: bool = True  # Ziegler et al. 2019 controller
    kl_target: float = 4.0  # nats per response
    kl_horizon: int = 1000  # β moves by at most 20% × rollout_batch/horizon per iteration
    missing_eos_penalty: float = 1.0  # subtracted from the RM score of responses that never end
    whiten_rewards: bool = False
    ptx_coef: float = 0.0  # γ of PPO-ptx; 0 = plain PPO
    ptx_batch: int = 8  # corpus sequences per minibatch for the ptx term
    grad_clip: float = 1.0
    reuse_rollout_logprobs: bool = True  # the sampler's log-probs are π_old (no second policy forward)
    eval_interval: int = 10  # gold-labeler evaluation every N iterations (0: only at the end)
    eval_prompts: int = 100
    log_interval: int = 1
    device: str = ""
    dtype: str = "auto"  # auto | fp32 | bf16: compute precision (nanorlhf/precision.py); auto: bf16 where it pays
    seed: int = 1337


PRESETS = {
    "micro": dict(iterations=3, rollout_batch=8, max_new_tokens=12, minibatch_size=4, ppo_epochs=2,
                  eval_interval=0, eval_prompts=8, ptx_batch=2),
    # tiny: 2 PPO epochs (InstructGPT used 1, Stiennon 4) keep an iteration near 4.5 s on 2 CPU cores
    # β 0.2 / KL target 1.5: at β 0.05 / 4 nats the policy drifted into off-task answers the 1M-parameter RM
    # over-scores ("The animals in the sentence are ..." to a chat prompt): gold win-rate vs SFT 42% -> 49%.
    "tiny": dict(iterations=40, ppo_epochs=2, lr=5e-5, init_kl_coef=0.2, kl_target=1.5),
    "small": dict(iterations=200, rollout_batch=256, minibatch_size=64, lr=1e-5, critic_lr=3e-5, eval_interval=20,
                  eval_prompts=400),
}


# ------------------------------------------------------------------------------------ 1-4: experience
@torch.no_grad()
def rollout(policy, ref, critic, reward_fn, prompt_ids: list[list[int]], tok, cfg: Config, kl_coef: float, generator):
    """Steps 1-4: sample responses, score them, shape rewards with the KL penalty, compute advantages."""
    device = policy.wte.weight.device
    policy.eval()
    with autocast(device, cfg.dtype):
        # 1. rollout: ancestral sampling at cfg.temperature (no top-k: it would bias the KL estimate)
        gen = generate(policy, prompt_ids, cfg.max_new_tokens, tok.eos_id, tok.pad_id, cfg.temperature, 0, generator)
        tokens, attn, P, mask = gen.tokens, gen.attention_mask, gen.prompt_len, gen.response_mask
        # 2. score: reward model at the last real token; per-token log-probs of π_old, π_ref; values
        scores = reward_fn(gen).float()
        scores = torch.where(gen.finished, scores, scores - cfg.missing_eos_penalty)
        logprobs = (gen.logprobs if cfg.reuse_rollout_logprobs else
                    response_logprobs(policy, tokens, attn, P, cfg.temperature)).float()
        ref_logprobs = response_logprobs(ref, tokens, attn, P, cfg.temperature).float()
        values = critic(tokens, attn, first=P - 1)[:, :-1].float()  # V(s_t): the state before response token t
    # 3. per-token reward: −β·(log π − log π_ref) at each token, the RM score added at the EOS
    rewards, kl = ppo.kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, kl_coef)
    if cfg.whiten_rewards:
        rewards = ppo.masked_whiten(rewards, mask, shift_mean=False)
    # 4. GAE over response tokens; advantages whitened over the valid tokens of the batch
    advantages, returns = ppo.gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = ppo.masked_whiten(advantages, mask)
    return dict(tokens=tokens, attn=attn, P=P, mask=mask, logprobs=logprobs, ref_logprobs=ref_logprobs,
                values=values, returns=returns, advantages=advantages, scores=scores, finished=gen.finished, kl=kl)


def gold_reward(labeler, tok, prompts: list[str]):
    """A perfect reward model for one batch of prompts: the gold labeler's utility of each response, in
    rating units centred on the middle of the 1-7 scale (its spread on SFT samples, sd ~2.5, is close to
    the RM's, ~2.1, so β means about the same). Not RLHF -- no one has the gold labeler -- but the ceiling
    of what reward-model training could give: `--reward=gold` separates "the RM is wrong" from "the policy
    cannot do better" (cf. Gao et al. 2022's gold reward model). No planted bias: judge(), not rank()."""
    def score(gen):
        texts = [tok.response_text(row) for row in gen.response.tolist()]
        u = [labeler.judge(p, text, finished).utility - 4.0 for p, (text, finished) in zip(prompts, texts)]
        return torch.tensor(u, device=gen.tokens.device)
    return score


# ----------------------------------------------------------------------------------------- 5: update
def ppo_update(policy, critic, opt_policy, opt_critic, exp: dict, cfg: Config, ptx_batches=None, rng=None):
    """Step 5: `ppo_epochs` passes over the batch in minibatches (a fresh permutation each epoch)."""
    device = policy.wte.weight.device
    policy.train(), critic.train()  # dropout is 0 in every RLHF model: train mode changes nothing numerically
    B = exp["tokens"].shape[0]
    stats = []
    gen = torch.Generator().manual_seed(rng.randrange(2**31) if rng else 0)
    for _ in range(cfg.ppo_epochs):
        for idx in torch.randperm(B, generator=gen).split(cfg.minibatch_size):
            mb = _minibatch(exp, idx.to(device))
            with autocast(device, cfg.dtype):
                logprobs, entropy = response_logprobs(policy, mb["tokens"], mb["attn"], mb["P"], cfg.temperature,
                                                      with_entropy=True)
                values = critic(mb["tokens"], mb["attn"], first=mb["P"] - 1)[:, :-1].float()  # no prompt-position work
            pg_loss, pg_stats = ppo.policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"], cfg.clip)
            vf_loss, vf_stats = ppo.value_loss(values, mb["values"], mb["returns"], mb["mask"], cfg.value_clip)
            loss = pg_loss + cfg.vf_coef * vf_loss
            if cfg.ptx_coef > 0:  # PPO-ptx: γ · pretraining next-token loss on corpus batches (InstructGPT eq. 2)
                x, y, m = (t.to(device) for t in next(ptx_batches))
                with autocast(device, cfg.dtype):
                    ptx = sft_loss(policy(x), y, m)
                loss = loss + cfg.ptx_coef * ptx
            check_finite("PPO loss", loss, len(stats), keep="the checkpoint of the last finished iteration")
            opt_policy.zero_grad(set_to_none=True), opt_critic.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.grad_clip)
            opt_policy.step(), opt_critic.step()
            stats.append({"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(), **{k: v.item() for k, v in pg_stats.items()},
                          **{k: v.item() for k, v in vf_stats.items()},
                          "entropy": masked_mean(entropy.float(), mb["mask"]).item(),
                          "ptx_loss": ptx.item() if cfg.ptx_coef > 0 else 0.0})
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}


def _minibatch(exp: dict, idx) -> dict:
    """Rows `idx` of the experience, with columns that are padding in every chosen row cut away."""
    attn = exp["attn"][idx]
    P = exp["P"]
    first = int(attn[:, :P].any(0).float().argmax())  # leading all-pad prompt columns
    T_used = int(exp["mask"][idx].any(0).nonzero().max()) + 1 if exp["mask"][idx].any() else 1
    mb = {k: exp[k][idx][:, :T_used] for k in ("mask", "logprobs", "values", "returns", "advantages")}
    mb.update(tokens=exp["tokens"][idx][:, first : P + T_used], attn=attn[:, first : P + T_used], P=P - first)
    return mb


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    cfg = parse_config(Config, argv, PRESETS)
    if cfg.reward not in ("model", "gold"):
        raise ConfigError(f"--reward={cfg.reward}: expected model or gold")
    run_name = cfg.run_name or ("ppo_ptx" if cfg.ptx_coef > 0 else "ppo")
    device = setup_device(cfg.device)
    cfg.dtype = resolve_dtype(cfg.dtype, device)  # auto -> what runs, saved with the config
    generator = seed_everything(cfg.seed)
    sample_gen = torch.Generator(device).manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    out = Path(cfg.out_dir) / run_name
    ckpt_path = out / "ckpt.pt"
    world = load_world(cfg.data_dir)

    policy_path = cfg.policy_from or stage_path(cfg.out_dir, "sft")
    reward_path = cfg.reward_from or stage_path(cfg.out_dir, "rm")
    policy, sft_ckpt = load_model(policy_path, "sft", device=device)
    ref, _ = load_model(policy_path, "sft", device=device)
    reward_model, _ = load_model(reward_path, "rm", device=device)
    critic, _ = load_model(reward_path, "rm", head="value", device=device)
    for m in (ref, reward_model):
        m.eval().requires_grad_(False)
    tok = load_tokenizer(sft_ckpt["tokenizer"])
    train_prompts = read_prompts(cfg.data_dir, "train")
    eval_prompts = read_prompts(cfg.data_dir, "val")[: cfg.eval_prompts]
    max_prompt = policy.config.block_size - cfg.max_new_tokens
    prompt_ids = [tok.prompt_ids(p["prompt"])[-max_prompt:] for p in train_prompts]
    ptx_batches = None
    if cfg.ptx_coef > 0:
        ptx_batches = lm_batches(corpus_tokens(cfg.data_dir, tok), cfg.ptx_batch, policy.config.block_size, generator)

    def model_reward(gen):  # the frozen reward model reads the last real token (the EOS)
        return reward_model(gen.tokens, gen.attention_mask)

    opt_policy = make_optimizer(policy, cfg.lr * cfg.lr_scale, 0.0, betas=(0.9, 0.95), eps=1e-5)
    opt_critic = make_optimizer(critic, cfg.critic_lr, 0.0, betas=(0.9, 0.95), eps=1e-5)
    kl_ctl = (ppo.AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else ppo.FixedKLController(cfg.init_kl_coef))
    print(f"ppo[{run_name}]: policy {policy.num_params() / 1e6:.2f}M params, {cfg.iterations} iterations x "
          f"{cfg.rollout_batch} episodes, β={cfg.init_kl_coef} ({'adaptive' if cfg.adaptive_kl else 'fixed'}), "
          f"ptx γ={cfg.ptx_coef}, reward {'the gold labeler' if cfg.reward == 'gold' else reward_path}, device {device} {cfg.dtype}")

    history, evals = [], []
    progress = Progress(cfg.iterations, f"ppo[{run_name}]")

    def gold(it):
        with autocast(device, cfg.dtype):  # sampled in the regime of the rollouts
            ev = gold_eval(policy, tok, world.labeler, eval_prompts, cfg.max_new_tokens, cfg.temperature,
                           torch.Generator(device).manual_seed(cfg.seed + 1))
        rm_eval = sum(h["rm_score"] for h in history[-3:]) / max(1, len(history[-3:])) if history else None
        evals.append({"iteration": it, "gold_rating": ev["rating"], "correct": ev["correct"],
                      "kl": history[-1]["kl"] if history else 0.0, "rm_score": rm_eval})
        print(format_eval(f"ppo[{run_name}] iteration {it}", ev))
        return ev

    gold(0)
    for it in range(1, cfg.iterations + 1):
        idx = [rng.randrange(len(prompt_ids)) for _ in range(cfg.rollout_batch)]
        reward_fn = (model_reward if cfg.reward == "model" else
                     gold_reward(world.labeler, tok, [train_prompts[i]["prompt"] for i in idx]))
        exp = rollout(policy, ref, critic, reward_fn, [prompt_ids[i] for i in idx], tok, cfg, kl_ctl.value,
                      sample_gen)  # steps 1-4
        upd = ppo_update(policy, critic, opt_policy, opt_critic, exp, cfg, ptx_batches, rng)  # step 5
        # 6. log
        kls = ppo.kl_estimators(exp["logprobs"], exp["ref_logprobs"], exp["mask"])
        row = {"iteration": it, "rm_score": exp["scores"].mean().item(), "kl": kls["k1"].item(), "kl_k3": kls["k3"].item(),
               "beta": kl_ctl.value, "resp_len": exp["mask"].sum(1).mean().item(),
               "eos_rate": exp["finished"].float().mean().item(),
               "explained_var": ppo.explained_variance(exp["values"], exp["returns"], exp["mask"]), **upd}
        history.append(row)
        kl_ctl.update(row["kl"], cfg.rollout_batch)
        if it % cfg.log_interval == 0 or it == cfg.iterations:
            progress.log(it, reward=row["rm_score"], kl=row["kl"], k3=row["kl_k3"], beta=row["beta"],
                         entropy=row["entropy"], clipfrac=row["clipfrac"], approx_kl=row["approx_kl"],
                         vf_loss=row["vf_loss"], ev=row["explained_var"], len=row["resp_len"], eos=row["eos_rate"])
        if cfg.eval_interval and it % cfg.eval_interval == 0 and it < cfg.iterations:
            gold(it)
            save_checkpoint(ckpt_path, policy, asdict(cfg), sft_ckpt["tokenizer"], it, {"history": history, "evals": evals})
    final = gold(cfg.iterations)
    metrics = {"history": history, "evals": evals, "final_gold": {k: v for k, v in final.items() if k != "samples"},
               "train_time_s": progress.elapsed()}
    save_checkpoint(ckpt_path, policy, asdict(cfg), sft_ckpt["tokenizer"], cfg.iterations, metrics)
    (out / "history.json").write_text(json.dumps({"history": history, "evals": evals}, indent=0))
    from nanorlhf.report import ppo_curves

    ppo_curves(out / "ppo_curves.png", run_name, history, evals, cfg.reward)
    print(f"ppo[{run_name}]: done in {progress.elapsed():.0f}s, saved {ckpt_path}")
    return metrics


if __name__ == "__main__":
    run_main(main)
