"""Byte-level BPE: our own trainer, loaded through tiktoken, and the chat template.

Training (Sennrich et al. 2016; GPT-2's byte-level variant): split text into words (GPT-2's pre-tokenisation
regex), count the distinct words, and repeatedly merge the most frequent adjacent pair of tokens, counted over
words × their frequency. Counting words, not the raw stream, makes it fast: the world's corpus has millions
of characters but a few thousand distinct words, and a merge touches only the words with the pair.

The result is tiktoken's `mergeable_ranks` (token bytes → rank; the 256 single bytes first), saved in
tiktoken's own file format (`base64(token) rank` per line) and loaded into a `tiktoken.Encoding`, which does
the fast encoding. Special tokens: end-of-text, padding (never EOS: the model must learn to stop, and the
reward is read at EOS), and the two chat markers. Chat template, used by every stage:
    <|user|> prompt <|assistant|> response <|endoftext|>
"""

from __future__ import annotations

import base64
import collections
import os
from pathlib import Path

import regex  # installed with tiktoken; supports \p{L} like tiktoken's own (Rust) regex
import tiktoken

from nanorlhf.config import StageError
from nanorlhf.files import DataError, atomic_write, read_text

# GPT-2's pre-tokenisation pattern (the same one tiktoken's "gpt2" encoding uses).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT, PAD, USER, ASSISTANT = "<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"
SPECIALS = (EOT, PAD, USER, ASSISTANT)


class TokenizerError(StageError, ValueError):
    pass


def train_bpe(texts, vocab_size: int, pattern: str = GPT2_PATTERN) -> dict[bytes, int]:
    """Learn `vocab_size - len(SPECIALS)` byte-level BPE ranks from an iterable of strings.

    Ties between equally frequent pairs go to the lexicographically smallest pair, so training is
    deterministic.
    """
    n_merges = vocab_size - len(SPECIALS) - 256
    if n_merges < 0:
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIALS)}")
    pat = regex.compile(pattern)
    word_counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        word_counts.update(pat.findall(text))
    words = [[bytes([b]) for b in w.encode("utf-8")] for w in word_counts]
    freqs = list(word_counts.values())

    pair_counts: collections.Counter[tuple[bytes, bytes]] = collections.Counter()
    where: dict[tuple[bytes, bytes], set[int]] = collections.defaultdict(set)  # pair -> word indices
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)

    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < 256 + n_merges and pair_counts:
        best = max(pair_counts.items(), key=lambda kv: (kv[1], _neg(kv[0])))[0]
        if pair_counts[best] <= 0:
            break
        merged = best[0] + best[1]
        if merged not in ranks:
            ranks[merged] = len(ranks)
        for i in list(where.pop(best, ())):
            w, f = words[i], freqs[i]
            for pair in zip(w, w[1:]):  # remove this word's old pairs, re-add after merging
                pair_counts[pair] -= f
            new, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == best[0] and w[j + 1] == best[1]:
                    new.append(merged)
                    j += 2
                else:
                    new.append(w[j])
                    j += 1
            words[i] = new
            for pair in zip(new, new[1:]):
                pair_counts[pair] += f
                where[pair].add(i)
        pair_counts.pop(best, None)
        pair_counts = +pair_counts if len(pair_counts) > 4 * len(ranks) + 10000 else pair_counts
    return ranks


def _neg(pair: tuple[bytes, bytes]):
    """Sort key that makes max() pick the lexicographically smallest pair among equal counts."""
    return tuple(-b for b in pair[0] + b"\x00" + pair[1])


def ranks_text(ranks: dict[bytes, int]) -> str:
    """Ranks in tiktoken's file format: `base64(token) rank` per line."""
    return "".join(f"{base64.b64encode(t).decode()} {r}\n"
                   for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))


def save_ranks(ranks: dict[bytes, int], path: str | os.PathLike) -> None:
    """Write ranks in tiktoken's format, atomically."""
    atomic_write(path, ranks_text(ranks))


def load_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a tiktoken ranks file; a bad line is an error naming the file and line."""
    try:
        text = read_text(path, "python data/prepare.py")
    except DataError as e:  # missing, a folder, not UTF-8: a tokenizer error like the others
        raise TokenizerError(str(e)) from None
    return parse_ranks(text, path)


def parse_ranks(text: str, source) -> dict[bytes, int]:
    """Ranks from the text of a ranks file (`source` names it in errors: a file, or a checkpoint)."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise TokenizerError(f"{source}:{n}: expected '<base64 token> <rank>', "
                                 f"got {line[:60]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{source}: ranks must be 0..{len(ranks) - 1} without gaps or repeats")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:  # byte-level BPE: any text must be encodable, byte by byte at worst
        raise TokenizerError(f"{source}: {len(missing)} of the 256 single bytes have no rank (the file is "
                             f"{'empty' if not ranks else 'incomplete'}; expected every byte, then the "
                             "merges; make it with: python data/prepare.py)")
    return ranks


class Tokenizer:
    """A tiktoken Encoding plus our special tokens and the chat template."""

    def __init__(self, enc: tiktoken.Encoding, name: str):
        self.enc, self.name = enc, name
        specials = enc._special_tokens
        self.eos_id, self.pad_id = specials[EOT], specials[PAD]
        self.user_id, self.assistant_id = specials[USER], specials[ASSISTANT]
        self.vocab_size = enc.n_vocab

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], name: str, pattern: str = GPT2_PATTERN, eot_id=None):
        n = len(ranks)
        specials = {EOT: eot_id if eot_id is not None else n}
        for s in SPECIALS[1:]:
            specials[s] = max(max(specials.values()) + 1, n)
        enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        return cls(enc, name)

    def encode(self, text: str) -> list[int]:
        """Ordinary text → ids; special-token strings inside `text` are encoded as plain text."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if int(i) != self.pad_id]
        return self.enc.decode(ids, errors="replace")

    def prompt_ids(self, prompt: str) -> list[int]:
        """<|user|> prompt <|assistant|> : what the policy is conditioned on."""
        return [self.user_id, *self.encode(prompt), self.assistant_id]

    def pair_ids(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """Prompt + response + EOS, and a mask that is 1 exactly on the response tokens and the EOS."""
        p = self.prompt_ids(prompt)
        r = [*self.encode(response), self.eos_id]
        return p + r, [0] * len(p) + [1] * len(r)

    def response_text(self, ids) -> tuple[str, bool]:
        """Decode generated ids up to the first EOS; also say whether an EOS was emitted."""
        ids = [int(i) for i in ids]
        finished = self.eos_id in ids
        if finished:
            ids = ids[: ids.index(self.eos_id)]
        specials = {self.pad_id, self.user_id, self.assistant_id}
        return self.decode([i for i in ids if i not in specials]).strip(), finished


def load_tokenizer(spec: str) -> Tokenizer:
    """`spec` is a ranks file we trained (e.g. data/tokenizer.tiktoken) or "gpt2".

    "gpt2" uses tiktoken's GPT-2 encoding, which needs its files already in tiktoken's cache
    (TIKTOKEN_CACHE_DIR); nothing here downloads.
    """
    if spec == "gpt2":
        try:
            base = tiktoken.get_encoding("gpt2")
        except Exception as e:  # no network here: explain instead of a connection traceback
            raise TokenizerError(
                "gpt2 encoding not available offline: put its files in TIKTOKEN_CACHE_DIR or use "
                f"data/tokenizer.tiktoken ({type(e).__name__})"
            ) from None
        return Tokenizer.from_ranks(base._mergeable_ranks, "gpt2", base._pat_str, eot_id=base.eot_token)
    return Tokenizer.from_ranks(load_ranks(spec), Path(spec).stem)
