import json

import pytest

from nanorlhf.data import DataError, ranked_sequences, read_comparisons, read_jsonl, sft_batch, subgroup


class FakeTok:
    """Characters as token ids; one prompt token (0) before the response, EOS 1, PAD 2."""
    eos_id, pad_id = 1, 2

    def pair_ids(self, prompt, response):
        return [0] + [ord(c) for c in response] + [self.eos_id], None


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": \n')
    with pytest.raises(DataError, match=r"x.jsonl:2: not valid JSON"):
        read_jsonl(p, {"prompt": str, "response": str})
    p.write_text('{"prompt": "a"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: missing key 'response'"):
        read_jsonl(p, {"prompt": str, "response": str})
    p.write_text('{"prompt": 3, "response": "b"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: 'prompt' must be str"):
        read_jsonl(p, {"prompt": str, "response": str})
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_comparisons_both_formats(tmp_path):
    p = tmp_path / "c.jsonl"
    rows = [{"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]},
            {"prompt": "q2", "chosen": "x", "rejected": "y"}]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    out = read_comparisons(p)
    assert out[0]["ranking"] == [2, 0, 1] and out[1] == {"prompt": "q2", "responses": ["x", "y"],
                                                         "ranking": [0, 1], "ties": []}
    p.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]}))
    with pytest.raises(DataError, match="permutation"):
        read_comparisons(p)
    for bad in ([[0, 0]], [[0, 3]], [0, 1], [[0]]):
        p.write_text(json.dumps({"prompt": "q", "responses": ["a", "b", "c"],
                                 "ranking": [0, 1, 2], "ties": bad}))
        with pytest.raises(DataError, match=r"c.jsonl:1: 'ties'"):
            read_comparisons(p)
    ok = {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [0, 1, 2], "off_prompt": [2],
          "finished": [True] * 3}
    p.write_text(json.dumps(ok))
    assert read_comparisons(p)[0]["off_prompt"] == [2]
    for key, bad in (("off_prompt", [3]), ("off_prompt", [1, 1]), ("off_prompt", 2),
                     ("finished", [True, False]),
                     ("finished", [1, 0, 1])):
        p.write_text(json.dumps({**ok, key: bad}))
        with pytest.raises(DataError, match=rf"c.jsonl:1: '{key}'"):
            read_comparisons(p)


def test_ranked_sequences_marks_ties_by_ranking_position():
    tok = FakeTok()
    groups = [{"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1], "ties": [[1, 2]]},
              {"prompt": "q", "responses": ["a", "b"], "ranking": [1, 0]}]
    tokens, mask, valid, tied = ranked_sequences(groups, tok, 16)
    assert valid.tolist() == [[True, True, True], [True, True, False]]
    # responses 2 and 1 sit at ranking positions 0 and 2
    assert tied.nonzero().tolist() == [[0, 0, 2]]
    assert tokens[0, 1].item() == ord("c") and tokens[1, 1].item() == ord("a")  # best first, after the prompt


def test_subgroup_keeps_the_order_and_ties_of_the_kept_responses():
    g = {"prompt": "q", "responses": ["a", "b", "c", "d"], "ranking": [3, 1, 0, 2], "ties": [[0, 2], [1, 3]],
         "finished": [True, False, True, True], "off_prompt": [3]}
    s = subgroup(g, [0, 1, 2])
    assert s["responses"] == ["a", "b", "c"] and s["finished"] == [True, False, True]
    assert s["ranking"] == [1, 0, 2] and s["ties"] == [[0, 2]] and s["off_prompt"] == []
    s = subgroup(g, [3, 2])  # reordered: indices follow `keep`
    assert (s["responses"] == ["d", "c"] and s["ranking"] == [0, 1] and s["ties"] == []
            and s["off_prompt"] == [0])
    assert g["responses"] == ["a", "b", "c", "d"]  # the input is left alone


def test_sft_batch_mask_covers_exactly_response_targets():
    ids, mask = [1, 2, 3, 10, 11, 99], [0, 0, 0, 1, 1, 1]  # 3 prompt tokens, 2 response + EOS
    x, y, m = sft_batch([(ids, mask), ([1, 10, 99], [0, 1, 1])], pad_id=0, block_size=16)
    assert x[0].tolist() == [1, 2, 3, 10, 11] and y[0].tolist() == [2, 3, 10, 11, 99]
    assert m[0].tolist() == [0, 0, 1, 1, 1]  # targets 10, 11, EOS count; predicting prompt tokens does not
    assert m[1].tolist() == [1, 1, 0, 0, 0]  # padding never counts
