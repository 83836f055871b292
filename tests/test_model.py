import pytest
import torch

from nanorlhf.checkpoint import load_model, save_checkpoint, tokenizer_record
from nanorlhf.generate import generate, response_logprobs
from nanorlhf.model import GPT, GPTConfig, last_token_index, rotate
from tests.helpers import tiny_gpt


def test_shapes_and_param_count():
    x = torch.randint(0, 50, (3, 10))
    assert tiny_gpt("lm")(x).shape == (3, 10, 50)
    assert tiny_gpt("value")(x).shape == (3, 10)
    assert tiny_gpt("scalar")(x).shape == (3,)
    m = tiny_gpt("lm")
    # tied embeddings: the output layer adds no parameters
    expected = (50 * 16 + 32 * 16
                + 2 * (2 * 16 + 16 * 48 + 48 + 16 * 16 + 16 + 2 * 16 + 16 * 64 + 64 + 64 * 16 + 16) + 2 * 16)
    assert m.num_params() == expected
    assert m.lm_head_weight.data_ptr() == m.wte.weight.data_ptr()


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_causality_change_at_t_never_changes_earlier_logits(pos):
    m = tiny_gpt("lm", pos=pos)
    x = torch.randint(0, 50, (2, 12))
    base = m(x)
    for t in (0, 5, 11):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 50
        out = m(y)
        assert torch.equal(out[:, :t], base[:, :t]) or torch.allclose(out[:, :t], base[:, :t], atol=1e-6)
        assert not torch.allclose(out[:, t:], base[:, t:])  # and the change is visible from t on


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=2000, n_layer=4, n_embd=128, head="scalar"))
    assert abs(m.wte.weight.std().item() - 0.02) < 2e-3
    assert abs(m.h[0].attn.c_proj.weight.std().item() - 0.02 / (8 ** 0.5)) < 1e-3
    assert abs(m.score.weight.std().item() - 1 / 129 ** 0.5) < 0.03
    assert m.score.bias.item() == 0


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_left_padding_matches_unpadded_row(pos):
    m = tiny_gpt("lm", pos=pos)
    row = torch.randint(1, 50, (1, 7))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], 1)
    mask = torch.tensor([[0, 0, 0] + [1] * 7])
    torch.testing.assert_close(m(padded, mask)[:, 3:], m(row), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_scalar_head_reads_last_real_token_under_padding(pos):
    m = tiny_gpt("scalar", pos=pos)
    x = torch.randint(1, 50, (1, 6))
    alone = m(x)
    # right padding with arbitrary junk tokens after the last real one changes nothing
    for junk in (0, 7, 49):
        padded = torch.cat([x, torch.full((1, 4), junk)], 1)
        mask = torch.tensor([[1] * 6 + [0] * 4])
        torch.testing.assert_close(m(padded, mask), alone, atol=1e-5, rtol=1e-5)
    # left padding too
    lp = torch.cat([torch.full((1, 3), 5), x], 1)
    torch.testing.assert_close(m(lp, torch.tensor([[0] * 3 + [1] * 6])), alone, atol=1e-5, rtol=1e-5)
    # and the read index is where the mask says: changing the last real token changes the score
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 50
    assert not torch.allclose(m(y), alone)
    assert last_token_index(torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])).tolist() == [1, 3, 0]


def test_value_head_from_scalar_head_shares_score_layer():
    rm = tiny_gpt("scalar")
    critic = GPT(GPTConfig(**{**rm.config.to_dict(), "head": "value"}))
    critic.load_state_dict(rm.state_dict())
    x = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(critic.eval()(x)[:, -1], rm(x))


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_kv_cache_decoding_equals_full_recomputation(pos):
    m = tiny_gpt("lm", pos=pos)
    x = torch.randint(0, 50, (2, 14))
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[1, :4] = False  # second row left-padded
    full = m(x, mask)
    cache = m.new_cache(2, 14)
    steps = [m(x[:, :6], mask[:, :6], cache)]
    for t in range(6, 14):
        steps.append(m(x[:, t : t + 1], mask[:, t : t + 1], cache))
    torch.testing.assert_close(torch.cat(steps, 1)[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1)[1, 4:], full[1, 4:], atol=1e-5, rtol=1e-5)


def test_block_size_enforced():
    m = tiny_gpt("lm", block=8)
    try:
        m(torch.zeros(1, 9, dtype=torch.long))
    except ValueError as e:
        assert "block_size" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_gpt2_state_dict_mapping_transposes_conv1d():
    m = tiny_gpt("lm")
    sd = {}
    for k, v in m.state_dict().items():
        v = v.clone() + 1.0
        if any(k.endswith(s) for s in ("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            v = v.t().contiguous()  # GPT-2 Conv1D layout
        sd["transformer." + k] = v
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    other = tiny_gpt("lm", seed=1)
    other.load_gpt2_state_dict(sd)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v + 1.0)


def test_rope_scores_depend_on_relative_position_only():
    """RoFormer's point: rotating a query at position m and a key at n gives q·k as a function of m − n."""
    m = tiny_gpt("lm", pos="rope")
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(qpos, kpos):
        (cq, sq), (ck, sk) = m.rope_angles(torch.tensor([[qpos]])), m.rope_angles(torch.tensor([[kpos]]))
        return (rotate(q, cq, sq) * rotate(k, ck, sk)).sum()

    torch.testing.assert_close(score(9, 4), score(25, 20))
    torch.testing.assert_close(score(3, 3), (q * k).sum())  # same position: no net rotation
    assert not torch.allclose(score(9, 4), score(9, 5))
    cos, sin = m.rope_angles(torch.arange(6).unsqueeze(0))
    x = torch.randn(1, 2, 6, 8)
    torch.testing.assert_close(rotate(x, cos, sin).norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_rope_model_has_no_position_table_and_refuses_gpt2_weights():
    learned, rope = tiny_gpt("lm"), tiny_gpt("lm", pos="rope")
    assert rope.wpe is None and learned.num_params() - rope.num_params() == 32 * 16
    with pytest.raises(ValueError, match="pos_embedding='learned'"):
        rope.load_gpt2_state_dict({})
    with pytest.raises(ValueError, match="pos_embedding"):
        GPT(GPTConfig(vocab_size=50, pos_embedding="alibi"))
    with pytest.raises(ValueError, match="even head size"):
        GPT(GPTConfig(vocab_size=50, n_embd=18, n_head=2, pos_embedding="rope"))
    # a shift of every position (a cache that starts later) changes nothing in a rotary model's logits
    x = torch.randint(0, 50, (1, 6))
    cache = rope.new_cache(1, 16)
    cache.next_pos[:] = 7  # as if 7 tokens came before, but none is attended to (their keys are masked)
    cache.length = 0
    torch.testing.assert_close(rope(x, torch.ones(1, 6), cache), rope(x), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- the padded vocabulary
def _loud_padding(vocab=50):
    """An lm model whose padded rows would win every softmax if anything read them: ln_f outputs the
    all-ones vector, the real rows are small, the padded ones 10 per channel (logit 160 against ~0)."""
    m = tiny_gpt("lm", vocab=vocab)
    assert m.wte.weight.shape[0] == 64 and m.config.padded_vocab == 64  # 50 padded to a multiple of 64
    assert torch.equal(m.wte.weight[vocab:], torch.zeros(64 - vocab, 16))  # padding starts at 0
    with torch.no_grad():
        m.ln_f.weight.zero_(), m.ln_f.bias.fill_(1.0)
        m.wte.weight[vocab:] = 10.0
    return m


def test_padded_logits_are_never_returned_sampled_or_scored():
    m = _loud_padding()
    x = torch.randint(0, 50, (3, 10))
    logits = m(x)
    assert logits.shape == (3, 10, 50)  # the real vocabulary only
    torch.testing.assert_close(logits, torch.nn.functional.linear(torch.ones(3, 10, 16), m.wte.weight[:50]))
    gen = generate(m, [[1, 2, 3]] * 8, 12, eos_id=49, pad_id=0, generator=torch.Generator().manual_seed(0))
    assert gen.response.max() < 50  # a padded id would be drawn every time if its logit were in the softmax
    lp = response_logprobs(m, gen.tokens, gen.attention_mask, gen.prompt_len)
    full = torch.log_softmax(m(gen.tokens, gen.attention_mask).float(), -1)[:, gen.prompt_len - 1 : -1]
    want = full.gather(-1, gen.tokens[:, gen.prompt_len :, None]).squeeze(-1) * gen.response_mask
    torch.testing.assert_close(lp * gen.response_mask, want, atol=1e-5, rtol=0)
    # scored over the real vocabulary: with the padding in, every log-prob is about -160
    assert lp.min() > -10
    torch.testing.assert_close(gen.logprobs, want, atol=1e-5, rtol=0)  # the sampler's own log-probs, too


def test_padding_keeps_the_unpadded_models_init_and_outputs():
    torch.manual_seed(0)
    padded = tiny_gpt("lm", vocab=50)
    torch.manual_seed(0)
    plain = GPT(GPTConfig(**{**padded.config.to_dict(), "vocab_multiple": 1}))
    assert plain.wte.weight.shape[0] == 50 and torch.equal(padded.wte.weight[:50], plain.wte.weight)
    assert padded.num_params() == plain.num_params()  # the padded rows are not parameters anyone learns
    x = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(padded(x), plain(x), atol=1e-6, rtol=0)


def test_checkpoint_from_before_the_padding_loads(tmp_path):
    old = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16, vocab_multiple=1))
    save_checkpoint(tmp_path / "ckpt.pt", old, {}, tokenizer_record("gpt2"), "sft", 1)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del ckpt["model_config"]["vocab_multiple"]  # as the checkpoints written before the field existed
    torch.save(ckpt, tmp_path / "ckpt.pt")
    model, _ = load_model(tmp_path / "ckpt.pt", "sft")
    x = torch.randint(0, 50, (2, 9))
    assert model.wte.weight.shape == (50, 16) and torch.equal(model(x), old(x))
