"""The reward model learns a planted preference: responses containing a marker token win."""
import pytest
import torch

from nanorlhf.losses import ranking_accuracy, ranking_loss
from nanorlhf.training import make_optimizer
from tests.helpers import tiny_gpt

MARKER, PAD = 7, 0


def _groups(n, k, gen):
    """n groups of k right-padded sequences, best first: the first holds the marker, the others do not."""
    seqs = torch.randint(8, 32, (n, k, 10), generator=gen)
    pos = torch.randint(3, 10, (n,), generator=gen)
    seqs[torch.arange(n), 0, pos] = MARKER
    lengths = torch.randint(6, 11, (n, k), generator=gen).maximum(pos.unsqueeze(1) + 1)
    mask = torch.arange(10).view(1, 1, 10) < lengths.unsqueeze(-1)
    return torch.where(mask, seqs, PAD).view(n * k, 10), mask.view(n * k, 10), k


def test_rm_learns_marker_preference_to_90_percent():
    torch.manual_seed(0)
    rm = tiny_gpt("scalar", vocab=32, block=16, n_layer=1, n_embd=32).train()
    opt = make_optimizer(rm, 3e-3, 0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        x, m, k = _groups(16, 3, gen)
        loss = ranking_loss(rm(x, m).view(-1, k))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, m, k = _groups(200, 3, torch.Generator().manual_seed(1))  # held out
    with torch.no_grad():
        correct, pairs = ranking_accuracy(rm.eval()(x, m).view(-1, k))
    # pairs between the two marker-less responses are coin flips: only marker pairs measure learning
    with torch.no_grad():
        s = rm(x, m).view(-1, k)
    marker_acc = ((s[:, 0:1] > s[:, 1:]).float().mean()).item()
    assert marker_acc >= 0.9, marker_acc
    assert correct / pairs > 0.6


def test_accuracy_read_off_scores_equals_scoring_each_ranking_again(tmp_path):
    """The RM stage and eval score each held-out response once (response_scores) and read every accuracy off
    those scores: the labeler's ranking, the gold order, a subset, ties left out, must equal ranking_eval,
    which scores the texts again in each ranking's order."""
    import random

    from nanorlhf.evaluation import ranking_eval, response_scores, scored_accuracy
    from nanorlhf.tokenizer import load_tokenizer, save_ranks, train_bpe

    texts = ["the cat sat", "a dog ran far", "the hat", "one two three four", "sit", "ran to the park"]
    save_ranks(train_bpe(texts * 10, 300), tmp_path / "t.tiktoken")
    tok = load_tokenizer(str(tmp_path / "t.tiktoken"))
    rm = tiny_gpt(head="scalar", vocab=tok.vocab_size, block=64)
    rng = random.Random(0)
    groups = []
    for _ in range(13):  # K of 2-5, shuffled rankings, some ties, one group whose every pair is tied
        k = rng.randint(2, 5)
        ranking = rng.sample(range(k), k)
        ties = [[i, j] for i in range(k) for j in range(i + 1, k) if rng.random() < 0.2]
        groups.append({"prompt": rng.choice(texts), "responses": rng.sample(texts, k), "ranking": ranking,
                       "ties": ties, "finished": [rng.random() < 0.8 for _ in range(k)]})
    groups.append({**groups[0], "ties": [[i, j] for i in range(len(groups[0]["ranking"]))
                                         for j in range(i + 1, len(groups[0]["ranking"]))]})
    scores = response_scores(rm, groups, tok, "cpu", 4, "fp32")
    assert [len(s) for s in scores] == [len(g["responses"]) for g in groups]
    assert scored_accuracy(scores, groups) == pytest.approx(ranking_eval(rm, groups, tok, "cpu", 4, "fp32")[1])
    reordered = [{**g, "ranking": list(reversed(g["ranking"]))} for g in groups]
    assert scored_accuracy(scores, reordered) == pytest.approx(
        ranking_eval(rm, reordered, tok, "cpu", 5, "fp32")[1])
    assert scored_accuracy(scores[3:7], groups[3:7]) == pytest.approx(
        ranking_eval(rm, groups[3:7], tok, "cpu", 4, "fp32")[1])
