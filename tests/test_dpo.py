"""DPO (train_dpo.py): the pairs a ranking gives, the batch that scores them, eq. (7)'s gradient on a tiny
model against the formula written out by hand, and a micro run that learns its training pairs."""

import json
import math
import random
import re
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train_dpo
import train_rm
import train_sft
from nanorlhf.checkpoint import checkpoint_tokenizer, load_model, maker
from nanorlhf.config import run_main
from nanorlhf.data import (pair_records, preference_pairs, preference_sequences, read_comparisons,
                           write_jsonl)
from nanorlhf.training import NonFiniteError
from tests.helpers import tiny_gpt

ROOT = Path(__file__).resolve().parent.parent


class CharTok:
    """Letters as token ids 10..35; <|user|> 1, <|assistant|> 2, EOS 3, PAD 0 (the chat template's shape)."""
    user_id, assistant_id, eos_id, pad_id = 1, 2, 3, 0

    def encode(self, text):
        return [10 + ord(c) - ord("a") for c in text]

    def prompt_ids(self, prompt):
        return [self.user_id, *self.encode(prompt), self.assistant_id]

    def pair_ids(self, prompt, response):
        p, r = self.prompt_ids(prompt), [*self.encode(response), self.eos_id]
        return p + r, [0] * len(p) + [1] * len(r)


TOK = CharTok()


# ------------------------------------------------------------------------------- pairs from a ranking
def test_pairs_are_the_ordered_pairs_of_the_ranking_less_ties():
    g = {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}
    assert preference_pairs(g) == [(2, 0), (2, 1), (0, 1)]  # C(3, 2), the better one first
    # a tie, either way round, is left out
    assert preference_pairs({**g, "ties": [[1, 0]]}) == [(2, 0), (2, 1)]
    g4 = {"prompt": "q", "responses": ["a", "b", "c", "d"], "ranking": [3, 1, 0, 2], "ties": [[0, 2], [3, 1]],
          "off_prompt": [3]}
    assert preference_pairs(g4) == [(3, 0), (3, 2), (1, 0), (1, 2)]  # C(4, 2) = 6, less 2 ties
    assert preference_pairs(g4, off_prompt=False) == [(1, 0), (1, 2)]  # response 3 answered another prompt
    # the same answer twice carries no preference; the same text cut off (no EOS) is another answer
    dup = {"prompt": "q", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]}
    assert preference_pairs(dup) == [(0, 1), (1, 2)]
    assert preference_pairs({**dup, "finished": [True, True, False]}) == [(0, 1), (0, 2), (1, 2)]


def test_pair_file_round_trips(tmp_path):
    groups = [{"prompt": "q", "responses": ["a", "b", "c"], "ranking": [1, 2, 0], "ties": [[0, 2]],
               "finished": [True, False, True]},
              {"prompt": "r", "responses": ["x", "y"], "ranking": [0, 1]}]
    records = pair_records(groups)
    assert records == [{"prompt": "q", "chosen": "b", "rejected": "c", "finished": [False, True]},
                       {"prompt": "q", "chosen": "b", "rejected": "a", "finished": [False, True]},
                       {"prompt": "r", "chosen": "x", "rejected": "y", "finished": [True, True]}]
    write_jsonl(tmp_path / "pairs.jsonl", records)
    back = read_comparisons(tmp_path / "pairs.jsonl")
    assert pair_records(back) == records
    # the common format without "finished": both ended
    (tmp_path / "plain.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    assert pair_records(read_comparisons(tmp_path / "plain.jsonl"))[0]["finished"] == [True, True]


BAD_LINES = [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "'chosen' and 'rejected' are the same answer"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "finished": [True]}, "'finished' must be"),
    ({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [0, 3, 1]}, "'ranking' must be a permutation"),
    ({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}, "'ranking' must be a permutation"),
]


@pytest.mark.parametrize("row, want", BAD_LINES, ids=["equal", "finished", "out_of_range", "not_permutation"])
def test_a_bad_comparison_is_one_line_naming_file_and_line_exit_2(tmp_path, capsys, row, want):
    path = tmp_path / "c.jsonl"
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(SystemExit) as e:  # before any model is loaded: the folders hold nothing
        run_main(lambda: train_dpo.main(["--preset=micro", f"--comparisons={path}",
                                         f"--out_dir={tmp_path}/out"]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {path}:3: {want}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------- the batch, eq. (7)
GROUPS = [{"prompt": "ab", "responses": ["cde", "f", "gh"], "ranking": [1, 2, 0],
           "finished": [True, False, True]},
          {"prompt": "hello", "responses": ["xy", "zzz", "w", "q"], "ranking": [2, 0, 3, 1],
           "ties": [[0, 3]]}]


def test_each_response_is_one_row_and_the_mask_covers_exactly_its_response():
    tokens, attn, P, resp, chosen, rejected, keys = preference_sequences(GROUPS, TOK, block_size=32)
    assert keys == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]  # each response once
    assert len(chosen) == 3 + 5 and P == len(TOK.prompt_ids("ab"))  # the shorter prompt
    for row, (b, i) in enumerate(keys):
        g = GROUPS[b]
        ids, m = TOK.pair_ids(g["prompt"], g["responses"][i])
        if not g.get("finished", [True] * 4)[i]:
            ids, m = ids[:-1], m[:-1]  # no EOS for a cut-off sample
        assert tokens[row, : len(ids)].tolist() == ids and not attn[row, len(ids) :].any()
        # response (+ EOS) only
        assert tokens[row, P:][resp[row]].tolist() == [t for t, k in zip(ids, m) if k]
    pairs = [(keys[c], keys[r]) for c, r in zip(chosen.tolist(), rejected.tolist())]
    assert pairs == [((b, i), (b, j)) for b, g in enumerate(GROUPS) for i, j in preference_pairs(g)]
    # too long for the context: a row keeps its end (the prompt's start is cut), the mask still its response
    tokens, attn, P, resp, *_ = preference_sequences(GROUPS[1:], TOK, block_size=8)
    ids = TOK.pair_ids("hello", "zzz")[0]  # 7 prompt tokens, 3 + EOS response tokens
    assert tokens[1].tolist() == ids[-8:] and P == 7 - 3 and tokens[1, P:][resp[1]].tolist() == ids[-4:]


def logp(model, tok, prompt, response, finished):
    """log π(y|x) written out: the sequence alone (no padding), Σ over the response tokens and the EOS of
    log softmax(logits)[next token], in float64. Too long for the context: the prompt's start is cut."""
    ids = tok.prompt_ids(prompt) + tok.encode(response) + ([tok.eos_id] if finished else [])
    cut = max(0, len(ids) - model.config.block_size)
    lp = F.log_softmax(model(torch.tensor([ids[cut:]]))[0].double(), -1)  # (T, V)
    return sum(lp[t - 1 - cut, ids[t]] for t in range(len(tok.prompt_ids(prompt)), len(ids)))


def explicit_margins(model, ref_model, tok, groups, off_prompt=True):
    """Δlogratio = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)), pair by pair.
    (M,)"""
    out = []
    for r in pair_records(groups, off_prompt):
        lw, ll = (logp(model, tok, r["prompt"], r[k], f)
                  for k, f in zip(("chosen", "rejected"), r["finished"]))
        rw, rl = (logp(ref_model, tok, r["prompt"], r[k], f).detach() for k, f in zip(("chosen", "rejected"),
                                                                                     r["finished"]))
        out.append((lw - rw) - (ll - rl))
    return torch.stack(out)


def explicit_loss(model, groups, ref_model, beta):
    """Eq. (7) written out: the mean over the ranking's pairs of −log σ(β Δlogratio)."""
    return -F.logsigmoid(beta * explicit_margins(model, ref_model, TOK, groups)).mean()


@pytest.mark.parametrize("rows", [0, 3])  # the batch's rows in one piece; in chunks of 3 of similar length
def test_dpo_gradient_equals_the_explicit_formula_on_a_tiny_model(rows, monkeypatch):
    monkeypatch.setattr(train_dpo, "chunk_rows", lambda device: rows)

    # embeddings scaled up: log-ratios of several nats, so σ(−β·margin) differs pair to pair
    def model(seed):
        m = tiny_gpt(vocab=40, seed=seed)
        with torch.no_grad():
            m.wte.weight.mul_(20)
        return m

    cfg = train_dpo.Config(batch_size=4, dtype="fp32", device="cpu")
    policy, ref = model(0), model(1)  # a reference apart from the policy
    groups = train_dpo.reference_logps(ref, GROUPS, TOK, 32, cfg, "cpu", off_prompt=True)
    loss, stats = train_dpo.dpo_step(policy, groups, TOK, 32, 0.5, True, "cpu", "fp32")
    loss.backward()
    got = [p.grad.clone() for p in policy.parameters()]

    policy64, ref64 = model(0).double(), ref.double()
    want = explicit_loss(policy64, GROUPS, ref64, 0.5)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5) and abs(want.item() - math.log(2)) > 0.5
    assert stats["pairs"] == 8
    for g, p in zip(got, policy64.parameters()):
        torch.testing.assert_close(g.double(), p.grad, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------- micro runs
@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Micro data, base, SFT (a few steps) and the reward model's ranked comparisons."""
    d = tmp_path_factory.mktemp("dpo")
    where = [f"--data_dir={d}/data", f"--out_dir={d}/out"]
    runpy.run_path(str(ROOT / "data/prepare.py"))["main"](["--preset=micro", f"--out_dir={d}/data"])
    quick = ["--preset=micro", "--max_steps=10", "--eval_interval=10", "--gold_eval_prompts=0",
             "--dtype=fp32"]
    train_sft.main(["--stage=pretrain", *quick, *where])
    train_sft.main(["--stage=sft", *quick, *where])
    train_rm.main(["--preset=micro", "--dtype=fp32", "--epochs=1", "--n_prompts=48", *where])
    return d


def test_micro_run_learns_its_training_pairs(made, tmp_path):
    where = ["--preset=micro", "--dtype=fp32", f"--data_dir={made}/data", f"--out_dir={made}/out"]
    metrics = train_dpo.main([*where, "--run_name=dpo_test", "--epochs=6"])
    # the policy starts as the reference
    assert metrics["history"]["loss"][0] == pytest.approx(math.log(2), abs=1e-4)
    # the trained policy on the training pairs, each pair's margin written out (not the script's evaluate)
    cfg = train_dpo.get_config(where)
    train_groups, _ = train_dpo.load_groups(cfg, random.Random(cfg.seed))  # the script's split, same seed
    ref, ck = load_model(made / "out/sft/ckpt.pt", "sft")
    policy, _ = load_model(made / "out/dpo_test/ckpt.pt", "dpo_test")
    with torch.no_grad():
        margins = cfg.beta * explicit_margins(policy, ref, checkpoint_tokenizer(ck), train_groups,
                                              off_prompt=False)
    loss, acc = -F.logsigmoid(margins).mean().item(), (margins > 0).double().mean().item()
    assert (len(margins) >= 20 and loss < math.log(2) - 0.1 and acc >= 0.75
            and margins.mean() > 0.1), (loss, acc)


def test_nan_stops_dpo_and_keeps_the_last_good_checkpoint(made, tmp_path):
    where = ["--preset=micro", "--dtype=fp32", f"--data_dir={made}/data", f"--out_dir={made}/out"]
    train_dpo.main([*where, "--run_name=dpo_nan", "--epochs=1"])
    good = (made / "out/dpo_nan/ckpt.pt").read_bytes()
    with pytest.raises(NonFiniteError) as e:
        train_dpo.main([*where, "--run_name=dpo_nan", "--lr=1e30", "--warmup_steps=0"])
    assert re.search(r"DPO loss became (nan|inf) at step 2", str(e.value)), e.value
    assert "Last good checkpoint kept" in str(e.value)
    assert (made / "out/dpo_nan/ckpt.pt").read_bytes() == good


def test_a_missing_dpo_checkpoint_names_train_dpo():
    assert maker("dpo") == "python train_dpo.py"
    assert maker("dpo_beta03") == "python train_dpo.py --run_name=dpo_beta03"
    assert maker("ppo_lr2") == "python train_ppo.py --run_name=ppo_lr2"
