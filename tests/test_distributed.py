"""torchrun data parallelism on the CPU: 2 gloo processes against 1 process, on micro shapes.

One spawn of two workers (the module fixture) runs every two-process scenario -- the pretraining, RM
and PPO stages, one PPO update on a fixed experience, one sharded rollout, and a naively DDP-wrapped
policy -- and saves what each rank saw; the tests compare the ranks with each other and with the same
work done by this (single) process.

The ranks meet through a file store in the test's folder rather than torchrun's TCP store: the test is
about what the stages do on two ranks, not about rendezvous. A sandbox may kill a gloo process in its
socket layer (a C++ abort, no Python traceback; seen once in CI, never here); such a spawn is tried again,
each rank's stderr is kept and shown, and if two bare gloo processes cannot even all-reduce on this
machine the two-process tests are skipped with that stderr, as the GPU tests are without a GPU.
"""

import datetime
import os
import random
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanorlhf import distributed, ppo
from nanorlhf.checkpoint import load_model, save_checkpoint, tokenizer_record
from nanorlhf.tokenizer import load_tokenizer
from nanorlhf.training import make_optimizer
from tests.helpers import tiny_gpt
from tests.test_ppo_loop import TOK, _prompts, planted_reward

WORLD = 2
ROOT = Path(__file__).resolve().parent.parent
PPO_SHAPE = dict(rollout_batch=8, minibatch_size=8, ppo_epochs=2, max_new_tokens=6, lr=3e-3, critic_lr=3e-3,
                 init_kl_coef=0.1, missing_eos_penalty=0.0, device="cpu")


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def pretrain_args(d: Path, out) -> list[str]:
    return ["--stage=pretrain", "--preset=micro", "--gold_eval_prompts=0", "--device=cpu",
            f"--data_dir={d}/data",
            f"--out_dir={d}/{out}"]  # the CPU (gloo) even on a GPU machine: two ranks, perhaps one GPU


def ppo_args(d: Path, out) -> list[str]:
    return ["--preset=micro", "--device=cpu", f"--data_dir={d}/data", f"--out_dir={d}/{out}",
            f"--policy_from={d}/fake/sft/ckpt.pt", f"--reward_from={d}/fake/rm/ckpt.pt"]


def dpo_args(d: Path, out, comparisons) -> list[str]:
    """DPO from the fake SFT model on `comparisons` (the two-rank RM stage's: rank 0 wrote them)."""
    return ["--preset=micro", "--device=cpu", f"--data_dir={d}/data", f"--out_dir={d}/{out}",
            f"--init_from={d}/fake/sft/ckpt.pt", f"--comparisons={comparisons}"]


def fixed_experience():
    """Models and one rollout of 8 prompts: the same on every rank (same seeds, the whole batch)."""
    from train_ppo import Config, rollout

    policy, ref, critic = (tiny_gpt(h, vocab=16, block=32, n_layer=1, n_embd=32, seed=s)
                           for h, s in (("lm", 0), ("lm", 0), ("value", 1)))
    cfg = Config(**PPO_SHAPE)
    exp = rollout(policy, ref.requires_grad_(False), critic, planted_reward, _prompts(8, random.Random(0)),
                  TOK, cfg,
                  0.1, torch.Generator().manual_seed(0))
    return policy, ref, critic, cfg, exp


def one_update(policy, critic, cfg, exp) -> torch.Tensor:
    from train_ppo import ppo_update

    opts = (make_optimizer(policy, cfg.lr, 0.0, eps=1e-5),
            make_optimizer(critic, cfg.critic_lr, 0.0, eps=1e-5))
    ppo_update(policy, critic, *opts, exp, cfg, rng=random.Random(0))
    return torch.cat([_flat(policy), _flat(critic)])


# ------------------------------------------------------------------------------- the two-process side
def _join(rank: int, d: Path, timeout_s: int = 300) -> None:
    """Become rank `rank` of WORLD: torchrun's variables (what distributed.py reads), a file store, and
    this rank's stderr in d/rank{rank}.stderr (a C++ abort's message lands there)."""
    err = open(d / f"rank{rank}.stderr", "w")
    os.dup2(err.fileno(), 2)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{d}/store", rank=rank, world_size=WORLD,
                            # distributed.init keeps this group
                            timeout=datetime.timedelta(seconds=timeout_s))


def _leave() -> None:
    dist.barrier()  # no rank tears its sockets down while the other still talks to it
    distributed.close()


def _probe(rank: int, folder: Path, d: Path) -> None:
    """The least two gloo ranks must do: one all-reduce (a minute to meet: a sandbox may hang, not abort)."""
    _join(rank, folder, timeout_s=60)
    t = torch.full((3,), float(rank + 1))
    dist.all_reduce(t)
    assert t.tolist() == [3.0] * 3
    _leave()


def _worker(rank: int, folder: Path, d: Path) -> None:
    """Every two-process scenario on the data and fake checkpoints in d; outputs in folder/two."""
    _join(rank, folder)
    two = folder.relative_to(d) / "two"
    import train_dpo
    import train_ppo
    import train_rm
    import train_sft
    from nanorlhf.generate import response_logprobs

    writes, real_replace = [], os.replace
    os.replace = lambda src, dst, *a, **k: (writes.append(str(dst)), real_replace(src, dst, *a, **k))[1]
    saved = {}  # the model each rank hands to save_checkpoint (rank 0 writes it; the others do not)
    for module in (train_sft, train_rm, train_ppo, train_dpo):
        real_save = module.save_checkpoint
        module.save_checkpoint = lambda path, model, *a, _real=real_save, **k: (
            saved.__setitem__(Path(path).parent.name, _flat(model).clone()), _real(path, model, *a, **k))[1]
    res = {}
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)  # the stages' logs: not needed here
        train_sft.main(pretrain_args(d, two))
        train_rm.main(["--preset=micro", "--device=cpu", f"--data_dir={d}/data", f"--out_dir={d}/{two}",
                       f"--init_from={d}/fake/sft/ckpt.pt"])
        metrics = train_ppo.main(ppo_args(d, two))
        train_dpo.main(dpo_args(d, two, d / two / "rm/comparisons.jsonl"))
    res["pretrain"], res["rm"], res["ppo_stage"], res["dpo"] = (saved["base"], saved["rm"], saved["ppo"],
                                                                saved["dpo"])
    res["beta"] = [h["beta"] for h in metrics["history"]]
    res["kl"] = [h["kl"] for h in metrics["history"]]
    res["gold"] = [e["gold_rating"] for e in metrics["evals"]]  # sampled in shards, gathered (generate.py)
    res["writes"] = writes

    # one PPO update: the same experience on both ranks, each updating on its half of the rows
    policy, ref, critic, cfg, exp = fixed_experience()
    half = exp.rows(distributed.shard(torch.arange(len(exp.tokens))))
    res["update"] = one_update(policy, critic, cfg, half)

    # a sharded rollout: record what advantage whitening gets and gives
    seen = []
    real_whiten = ppo.masked_whiten
    ppo.masked_whiten = lambda x, mask, **k: seen.append((x, mask, real_whiten(x, mask, **k))) or seen[-1][2]
    cfg = train_ppo.Config(**{**PPO_SHAPE, "rollout_batch": 8})
    train_ppo.rollout(policy, ref, critic, planted_reward, distributed.shard(_prompts(8, random.Random(1))),
                      TOK, cfg,
                      0.1, torch.Generator().manual_seed(distributed.rank_seed(5)))
    ppo.masked_whiten = real_whiten
    res["whiten_in"], res["whiten_mask"], res["whiten_out"] = seen[-1]

    # naive DDP: response_logprobs calls hidden_states, not forward, so DDP's reducer never runs
    for how in ("naive_ddp", "sync_grads"):
        model = tiny_gpt("lm", vocab=16, block=32, n_layer=1, n_embd=32, seed=0)
        wrapped = torch.nn.parallel.DistributedDataParallel(model) if how == "naive_ddp" else model
        opt = make_optimizer(model, 1e-2, 0.0)
        # each rank's data
        tokens = torch.randint(0, 16, (4, 12), generator=torch.Generator().manual_seed(rank))
        net = wrapped.module if how == "naive_ddp" else model  # as train_ppo reaches it: around forward()
        loss = -response_logprobs(net, tokens, torch.ones_like(tokens), 4).mean()
        loss.backward()
        if how == "sync_grads":
            distributed.sync_grads(model)
        opt.step()
        res[how] = _flat(model)
    torch.save(res, folder / f"rank{rank}.pt")
    _leave()


def _spawn(fn, d: Path, name: str, tries: int, probe: bool = False) -> str:
    """Run fn(rank, folder, d) on WORLD processes; "" when they all succeed, else the ranks' stderr.

    A rank killed by a signal is tried again in a fresh folder, up to `tries` times. A rank that raises
    fails the test at once (its traceback is the cause) -- except in the probe, where any failure is the
    machine's, not the code's, and is tried again too."""
    errors = []
    for attempt in range(tries):
        folder = d / name / f"try{attempt}"
        folder.mkdir(parents=True)
        try:
            mp.spawn(fn, args=(folder, d), nprocs=WORLD, join=True)
            return ""
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            err = "\n".join(f"rank {r} stderr: " + (folder / f"rank{r}.stderr").read_text()[-2000:]
                            for r in range(WORLD) if (folder / f"rank{r}.stderr").exists())
            if not probe and getattr(e, "signal_name", None) is None:
                pytest.fail(f"{e}\n{err}")
            errors.append(f"try {attempt}: {e}\n{err}")
    return "\n".join(errors)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(rank 0's results, rank 1's results, the folder): micro data, fake SFT/RM checkpoints, one spawn."""
    import runpy

    d = tmp_path_factory.mktemp("ddp")
    runpy.run_path(str(ROOT / "data/prepare.py"))["main"](["--preset=micro", f"--out_dir={d}/data"])
    tok_file = str(d / "data/tokenizer.tiktoken")
    vocab = load_tokenizer(tok_file).vocab_size
    for stage, head in (("sft", "lm"), ("rm", "scalar")):
        save_checkpoint(d / f"fake/{stage}/ckpt.pt",
                        tiny_gpt(head, vocab=vocab, block=64, n_layer=1, n_embd=32),
                        {}, tokenizer_record(tok_file), stage, 1)
    probe = _spawn(_probe, d, "probe", tries=2, probe=True)
    if probe:
        pytest.skip(f"two gloo processes cannot all-reduce on this machine:\n{probe}")
    failed = _spawn(_worker, d, "runs", tries=3)
    if failed:
        pytest.fail(f"the two-process run was killed on every try:\n{failed}")
    done = next(p for p in sorted((d / "runs").iterdir()) if (p / "rank0.pt").exists())
    return (*(torch.load(done / f"rank{r}.pt", weights_only=True) for r in range(WORLD)), d)


# ------------------------------------------------------------------------------------------ the tests
def test_pretraining_on_two_ranks_keeps_them_equal_and_equals_one_process(runs):
    r0, r1, d = runs
    assert torch.equal(r0["pretrain"], r1["pretrain"])  # synchronised gradients: the same bits on both ranks
    import train_sft

    train_sft.main(pretrain_args(d, "one"))
    one = _flat(load_model(d / "one/base/ckpt.pt", "base")[0])
    # same global batch of 8 (4 rows per rank): the same 30 AdamW steps, up to the order of float sums
    torch.testing.assert_close(r0["pretrain"], one, atol=2e-5, rtol=0)


def test_one_ppo_update_on_two_ranks_equals_one_process_on_the_whole_batch(runs):
    r0, r1, _ = runs
    assert torch.equal(r0["update"], r1["update"])
    policy, _, critic, cfg, exp = fixed_experience()
    one = one_update(policy, critic, cfg, exp)
    start = torch.cat([_flat(m) for m in fixed_experience()[0:3:2]])
    assert (one - start).abs().max() > 1e-3  # the update moved the weights: a real comparison
    torch.testing.assert_close(r0["update"], one, atol=2e-5, rtol=0)


def test_rm_stage_on_two_ranks_keeps_them_equal(runs):
    r0, r1, _ = runs
    assert torch.equal(r0["rm"], r1["rm"])  # sampled in shards, the same groups ranked, gradients averaged


def test_dpo_stage_on_two_ranks_keeps_them_equal_and_equals_one_process(runs):
    r0, r1, d = runs
    assert torch.equal(r0["dpo"], r1["dpo"])  # reference log-probs in shards, gathered; gradients averaged
    import train_dpo

    done = next(p for p in sorted((d / "runs").iterdir()) if (p / "rank0.pt").exists())
    train_dpo.main(dpo_args(d, "one", done / "two/rm/comparisons.jsonl"))
    one = _flat(load_model(d / "one/dpo/ckpt.pt", "dpo")[0])
    # DPO moved the weights
    assert (one - _flat(load_model(d / "fake/sft/ckpt.pt", "sft")[0])).abs().max() > 1e-3
    # the same global batches of 4 groups (2 per rank), each rank's loss weighted by its share of the pairs
    torch.testing.assert_close(r0["dpo"], one, atol=2e-5, rtol=0)


def test_ppo_stage_two_ranks_same_weights_beta_kl_and_evaluations(runs):
    r0, r1, _ = runs
    assert torch.equal(r0["ppo_stage"], r1["ppo_stage"])
    assert r0["beta"] == r1["beta"] and r0["kl"] == r1["kl"]  # every rank steers β by the global KL
    assert len(set(r0["beta"])) == len(r0["beta"])  # β moved each iteration: equal β is not trivially true
    assert r0["gold"] == r1["gold"]  # the evaluations' sharded samples are gathered: every rank judges all


def test_advantages_are_whitened_with_the_statistics_of_every_rank(runs):
    r0, r1, _ = runs
    T = max(r["whiten_in"].shape[1] for r in (r0, r1))
    pad = lambda t: torch.nn.functional.pad(t, (0, T - t.shape[1]))  # noqa: E731
    x, m, out = (torch.cat([pad(r[k]) for r in (r0, r1)]) for k in ("whiten_in", "whiten_mask", "whiten_out"))
    torch.testing.assert_close(out, ppo.masked_whiten(x, m), atol=1e-5, rtol=0)  # the one-process whitening
    local = ppo.masked_whiten(r0["whiten_in"], r0["whiten_mask"])
    # per-rank statistics would differ: the test can fail
    assert (local - r0["whiten_out"]).abs().max() > 1e-3


def test_only_rank_0_writes_files(runs):
    r0, r1, _ = runs
    assert r1["writes"] == []
    names = {Path(p).relative_to(Path(p).parents[1]).as_posix() for p in r0["writes"]}
    assert {"base/ckpt.pt", "rm/comparisons.jsonl", "rm/ckpt.pt", "ppo/ckpt.pt", "ppo/history.json"} <= names


def test_naive_ddp_wrap_leaves_ranks_apart_and_sync_grads_does_not(runs):
    """Why distributed.sync_grads exists: PPO's loss reaches the trunk around forward(), DDP's hook."""
    r0, r1, _ = runs
    assert not torch.equal(r0["naive_ddp"], r1["naive_ddp"])
    assert torch.equal(r0["sync_grads"], r1["sync_grads"])


def test_one_process_helpers_are_no_ops():
    assert not distributed.active() and distributed.world_size() == 1
    items = list(range(5))
    assert distributed.shard(items) == items and distributed.gather(items) == items
    assert distributed.local_share(7) == 1.0 and distributed.rank_seed(3) == 3
    assert distributed.masked_moments(torch.randn(3, 4), torch.ones(3, 4)) is None  # masked_whiten's own
    assert distributed.average({"kl": 0.5, "iteration": 3}, 8) == {"kl": 0.5, "iteration": 3}


def test_shards_are_contiguous_blocks_that_concatenate_to_the_whole(monkeypatch):
    for n in (0, 1, 5, 8):
        blocks = []
        for r in range(3):
            monkeypatch.setenv("RANK", str(r)), monkeypatch.setenv("WORLD_SIZE", "3")
            blocks.append(distributed.shard(list(range(n))))
        assert sum(blocks, []) == list(range(n)) and max(map(len, blocks)) - min(map(len, blocks)) <= 1
