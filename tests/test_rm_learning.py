"""The reward model learns a planted preference: responses containing a marker token win."""

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
