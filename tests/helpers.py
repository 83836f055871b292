"""Tiny models and tokenizers shared by the tests."""

import torch

from nanorlhf.model import GPT, GPTConfig


def tiny_gpt(head="lm", vocab=50, block=32, n_layer=2, n_head=2, n_embd=16, seed=0, pos="learned") -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                         head=head, pos_embedding=pos)).eval()
