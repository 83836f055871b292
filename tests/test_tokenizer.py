import base64
import random

import pytest

from nanorlhf.tokenizer import Tokenizer, TokenizerError, load_ranks, load_tokenizer, save_ranks, train_bpe

TEXTS = ["the cat sat on the mat. the cat ate the hat!", "A dog ran to the park; the dog was happy.",
         "Ünïcödé 日本語 emoji 🙂 and tabs\tand\nnewlines", "numbers 12345 and 3.14"] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    ranks = train_bpe(TEXTS, 300)
    path = tmp_path_factory.mktemp("tok") / "t.tiktoken"
    save_ranks(ranks, path)
    return load_tokenizer(str(path))


def test_bpe_learns_merges_deterministically():
    a, b = train_bpe(TEXTS, 300), train_bpe(TEXTS, 300)
    assert a == b and len(a) == 296
    assert b" the" in a and b" cat" in a  # frequent words become single tokens


def test_round_trip_arbitrary_unicode_and_bytes(tok):
    rng = random.Random(0)
    samples = TEXTS[:4] + ["", " ", "\x00\x01\xff", "<|endoftext|> is text here", "ZZZ unseen wordsqq"]
    for _ in range(50):
        samples.append("".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000),
                                               rng.randrange(0x1F300, 0x1F64F)]))
                                               for _ in range(rng.randrange(1, 30))))
    for s in samples:
        ids = tok.encode(s)
        assert tok.decode(ids) == s
    # special-token text in user input is plain text, never the special id
    assert tok.eos_id not in tok.encode("<|endoftext|>")
    # arbitrary bytes (invalid UTF-8) survive at the byte level
    raw = bytes(range(256))
    assert (tok.enc.decode_bytes(tok.enc.encode_ordinary(raw.decode("latin-1")))
            == raw.decode("latin-1").encode())


def test_specials_distinct(tok):
    ids = {tok.eos_id, tok.pad_id, tok.user_id, tok.assistant_id}
    assert len(ids) == 4 and min(ids) >= 296 and tok.vocab_size == 300


def test_chat_template_mask_covers_exactly_response(tok):
    ids, mask = tok.pair_ids("Name a cat.", "Tom is a cat.")
    p = tok.prompt_ids("Name a cat.")
    assert ids[: len(p)] == p and p[0] == tok.user_id and p[-1] == tok.assistant_id
    assert mask == [0] * len(p) + [1] * (len(ids) - len(p))
    assert ids[-1] == tok.eos_id
    assert tok.decode([i for i, m in zip(ids, mask) if m][:-1]) == "Tom is a cat."
    text, finished = tok.response_text(ids[len(p):] + [tok.pad_id, tok.pad_id])
    assert text == "Tom is a cat." and finished
    assert tok.response_text(tok.encode(" no end"))[1] is False


def test_bad_ranks_file_names_line(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text(f"{base64.b64encode(b'a').decode()} 0\nnot-a-valid-line\n")
    with pytest.raises(TokenizerError, match=r"bad.tiktoken:2"):
        load_ranks(path)
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(str(tmp_path / "missing.tiktoken"))


def test_gpt2_style_ranks_file_loads(tmp_path):
    """A user's own tiktoken ranks file (the format of gpt2's) loads with our special tokens appended."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"ab"] = 256
    path = tmp_path / "user.tiktoken"
    save_ranks(ranks, path)
    t = load_tokenizer(str(path))
    assert t.encode("ab") == [256] and t.eos_id == 257 and isinstance(t, Tokenizer)
