"""The PPO loop of train_ppo.py on micro models: ratio == 1 at the start, and a planted reward rises."""

import random
from types import SimpleNamespace

import torch

from nanorlhf import ppo
from nanorlhf.generate import response_logprobs
from nanorlhf.prompts import parse_task
from nanorlhf.training import make_optimizer
from nanorlhf.world import World
from tests.helpers import tiny_gpt
from train_ppo import Config, _minibatch, gold_reward, ppo_update, rollout

TOK = SimpleNamespace(eos_id=14, pad_id=15)
TARGET = 3  # the planted reward: fraction of response tokens equal to TARGET


def planted_reward(gen):
    m = gen.response_mask
    return ((gen.response == TARGET).float() * m).sum(1) / m.sum(1).clamp(min=1)


def _models(seed=0):
    policy = tiny_gpt("lm", vocab=16, block=32, n_layer=1, n_embd=32, seed=seed)
    ref = tiny_gpt("lm", vocab=16, block=32, n_layer=1, n_embd=32, seed=seed).requires_grad_(False)
    critic = tiny_gpt("value", vocab=16, block=32, n_layer=1, n_embd=32, seed=seed + 1)
    return policy, ref, critic


def _cfg(**kw):
    base = dict(rollout_batch=32, max_new_tokens=8, ppo_epochs=2, minibatch_size=16, lr=3e-3, critic_lr=3e-3,
                # ratio == 1: fp32 only
                init_kl_coef=0.0, missing_eos_penalty=0.0, device="cpu", dtype="fp32")
    return Config(**{**base, **kw})


def _prompts(n, rng):
    return [[rng.randrange(0, 13) for _ in range(rng.randrange(2, 6))] for _ in range(n)]


def test_rollout_logprobs_equal_recomputed_ratio_is_one_before_update():
    torch.manual_seed(0)
    policy, ref, critic = _models()
    cfg = _cfg(init_kl_coef=0.1)
    exp = rollout(policy, ref, critic, planted_reward, _prompts(32, random.Random(0)), TOK, cfg, 0.1,
                  torch.Generator().manual_seed(0))
    mb = _minibatch(exp, torch.arange(16))
    new = response_logprobs(policy, mb.tokens, mb.attn, mb.P, cfg.temperature)
    ratio = torch.exp(new - mb.logprobs)[mb.mask.bool()]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)
    # policy == reference: the KL part of the reward is exactly zero, so rewards are the score at EOS only
    assert exp.kl.abs().max().item() < 1e-5
    # the critic's rollout values are what it predicts on the trimmed minibatch too
    v = critic(mb.tokens, mb.attn)[:, mb.P - 1 : -1]
    torch.testing.assert_close(v * mb.mask, mb.values * mb.mask, atol=1e-5, rtol=1e-5)


def test_ppo_raises_planted_reward():
    torch.manual_seed(0)
    policy, ref, critic = _models()
    cfg = _cfg()
    opt_p = make_optimizer(policy, cfg.lr, 0.0, eps=1e-5)
    opt_c = make_optimizer(critic, cfg.critic_lr, 0.0, eps=1e-5)
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    rewards = []
    for _ in range(25):
        exp = rollout(policy, ref, critic, planted_reward, _prompts(32, rng), TOK, cfg, 0.0, gen)
        rewards.append(exp.scores.mean().item())
        ppo_update(policy, critic, opt_p, opt_c, exp, cfg, rng=rng)
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert start < 0.15  # 1/16 by chance
    assert end > start + 0.3, rewards


def test_kl_penalty_holds_policy_near_reference():
    """With a large β the same planted reward moves the policy much less (KL stays small)."""
    finals = {}
    for beta in (0.0, 2.0):
        torch.manual_seed(0)
        policy, ref, critic = _models()
        cfg = _cfg(init_kl_coef=beta)
        opt_p, opt_c = make_optimizer(policy, cfg.lr,
                                      0.0, eps=1e-5), make_optimizer(critic, cfg.critic_lr, 0.0, eps=1e-5)
        rng, gen = random.Random(0), torch.Generator().manual_seed(0)
        for _ in range(15):
            exp = rollout(policy, ref, critic, planted_reward, _prompts(32, rng), TOK, cfg, beta, gen)
            ppo_update(policy, critic, opt_p, opt_c, exp, cfg, rng=rng)
        finals[beta] = ppo.kl_estimators(exp.logprobs, exp.ref_logprobs, exp.mask)["k1"].item()
    assert finals[2.0] < 0.5 * finals[0.0], finals


def test_gold_reward_scores_each_response_against_its_own_prompt():
    """--reward=gold: row i of the rollout is judged against prompt i, in rating units centred on 4."""
    world = World(0)
    prompts = [p["prompt"] for p in world.prompts(3, "val")]
    tasks = [parse_task(p) for p in prompts]
    texts = [(tasks[0].ideal[0], True), (tasks[1].wrong[0], True), (tasks[2].ideal[0], False)]
    tok = SimpleNamespace(response_text=lambda row: texts[row[0]])  # row i decodes to texts[i]
    gen = SimpleNamespace(response=torch.arange(3)[:, None], tokens=torch.zeros(3, 1))
    scores = gold_reward(world.labeler, tok, prompts)(gen)
    expected = [world.labeler.judge(p, t, f).utility - 4.0 for p, (t, f) in zip(prompts, texts)]
    torch.testing.assert_close(scores, torch.tensor(expected))
    assert scores[0] == 3.0  # an ideal answer is a 7
    assert scores[2] < scores[0] - 2  # not ending (no EOS) costs 3 points
    # the same text scored against another row's prompt is judged for that prompt
    swapped = gold_reward(world.labeler, tok, [prompts[1], prompts[0], prompts[2]])(gen)
    assert swapped[0] < scores[0]
