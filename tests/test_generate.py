import pytest
import torch

from nanorlhf.generate import generate, response_logprobs, response_mask_from, sample_responses
from tests.helpers import tiny_gpt

EOS, PAD = 48, 49


def _prompts():
    return [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_kv_cache_generation_equals_no_cache_greedy(pos):
    m = tiny_gpt("lm", pos=pos)
    a = generate(m, _prompts(), 8, EOS, PAD, temperature=0, use_cache=True)
    b = generate(m, _prompts(), 8, EOS, PAD, temperature=0, use_cache=False)
    assert torch.equal(a.response, b.response)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_left_padded_batch_equals_single_rows(pos):
    m = tiny_gpt("lm", pos=pos)
    batch = generate(m, _prompts(), 8, EOS, PAD, temperature=0)
    for i, p in enumerate(_prompts()):
        single = generate(m, [p], 8, EOS, PAD, temperature=0)
        n = single.response.shape[1]
        assert torch.equal(batch.response[i, :n], single.response[0])


def test_sampled_logprobs_equal_recomputed_at_temperature():
    """The sampler's log-probs are π_old in PPO: they must equal a full forward at the same temperature."""
    m = tiny_gpt("lm")
    g = torch.Generator().manual_seed(0)
    for temp in (1.0, 0.7):
        gen = generate(m, _prompts(), 10, EOS, PAD, temperature=temp, generator=g)
        recomputed = response_logprobs(m, gen.tokens, gen.attention_mask, gen.prompt_len, temp)
        torch.testing.assert_close(recomputed * gen.response_mask, gen.logprobs, atol=1e-5, rtol=1e-5)
    # and a loop of log_softmax(logits_t)[y_{t+1}] in float64 (alignment: column t predicts token t + 1)
    logits = m(gen.tokens, gen.attention_mask).double() / 0.7
    P = gen.prompt_len
    for b in range(3):
        for t in range(gen.response.shape[1]):
            if gen.response_mask[b, t]:
                ref = torch.log_softmax(logits[b, P - 1 + t], -1)[gen.tokens[b, P + t]]
                assert abs(ref.item() - gen.logprobs[b, t].item()) < 1e-4


def test_response_mask_stops_after_first_eos():
    r = torch.tensor([[3, EOS, 5, EOS], [EOS, PAD, PAD, PAD], [1, PAD, 3, 4]])
    # a PAD id sampled before any EOS is a real token; everything after the first EOS is not
    assert response_mask_from(r, EOS).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]


def test_finished_rows_get_pad_and_stop():
    m = tiny_gpt("lm")
    with torch.no_grad():  # make EOS overwhelmingly likely after two tokens: bias its embedding
        m.wte.weight[EOS] *= 0
        m.wte.weight[EOS] += 5 * m.ln_f.weight.sign()
    gen = generate(m, _prompts(), 12, EOS, PAD, temperature=1.0, generator=torch.Generator().manual_seed(1))
    for row, fin in zip(gen.response.tolist(), gen.finished.tolist()):
        if fin:
            k = row.index(EOS)
            assert all(t == PAD for t in row[k + 1 :])


def test_sampler_frequencies_match_softmax():
    """Chi-square style check: first-token frequencies follow softmax(logits / T)."""
    m = tiny_gpt("lm", vocab=8, n_embd=8)
    p = torch.softmax(m(torch.tensor([[1, 2]]))[0, -1] / 0.8, -1)
    gen = generate(m, [[1, 2]] * 4000, 1, 100, 101, temperature=0.8,
                   generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(gen.response[:, 0], minlength=8).float() / 4000
    chi2 = (4000 * (freq - p) ** 2 / p).sum().item()
    assert chi2 < 24.3  # 99.9% quantile of chi-square with 7 degrees of freedom


class _Ids:
    """A stand-in tokenizer: prompts are keys of a table of token ids; responses come back as id tuples."""
    eos_id, pad_id = EOS, PAD

    def __init__(self, table):
        self.table = table

    def prompt_ids(self, prompt):
        return list(self.table[prompt])

    def response_text(self, row):
        return tuple(row), EOS in row


def test_few_shot_prefix_is_used_whole_or_not_at_all():
    model = tiny_gpt(block=32)  # 32 - 8 new tokens: 24 tokens of context
    prefix = list(range(20, 30))  # 10 tokens
    short, long = [1, 2, 3, 4, 5], list(range(1, 21))  # 5 + 10 fit; 20 + 10 do not
    tok = _Ids({"short": short, "long": long, "short with prefix": prefix + short})

    def run(prompt, pre=()):
        return sample_responses(model, tok, [prompt], 8, 1.0, seed=3, prefix_ids=pre)

    assert run("short", prefix) == run("short with prefix")  # fits: the whole prefix is there
    assert run("long", prefix) == run("long")  # does not fit: no piece of the prefix (a broken example)


def test_each_prompt_samples_from_its_own_stream_whatever_the_batch_and_the_process(monkeypatch):
    """sample_responses seeds prompt i with row_seed(seed, i): the same responses with any batch size, and a
    rank of a two-process run samples exactly its block of the one-process list (the eval's promise)."""
    model = tiny_gpt(block=32)
    names = {f"p{i}": [1 + i, 2 + 2 * i, 3][: 1 + i % 3] for i in range(6)}
    tok = _Ids(names)
    prompts = list(names)
    whole = sample_responses(model, tok, prompts, 8, 1.0, seed=5, batch_size=6)
    assert sample_responses(model, tok, prompts, 8, 1.0, seed=5, batch_size=4) == whole
    assert sample_responses(model, tok, prompts, 8, 1.0, seed=5, batch_size=1) == whole
    assert len(set(whole)) > 3  # the rows are sampled, not all alike
    assert sample_responses(model, tok, prompts, 8, 1.0, seed=6, batch_size=6) != whole
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # not initialised: gather gives this rank's block back
    assert sample_responses(model, tok, prompts, 8, 1.0, seed=5) == whole[3:]
