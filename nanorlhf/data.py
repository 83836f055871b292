"""Reading data files with clear errors, and turning token lists into padded batches.

Every file a stage reads goes through `read_bytes` (a missing file names the command that makes it) and
then `decode_utf8`; every JSON file (a stage's results or state: eval.json, history.json, meta.json,
pipeline_state.json) through `read_json`, every JSONL file through `read_jsonl_lines`: a bad one is one
line naming the file and line and what was expected.

Mask convention everywhere: 1 = this token counts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from nanorlhf import files
from nanorlhf.files import (DataError, atomic_write, check_keys, decode_utf8, read_bytes,  # noqa: F401
                            read_json)  # DataError, check_keys, read_json: the stages import them from here
from nanorlhf.tokenizer import EOT
from nanorlhf.world import World

PREPARE = "python data/prepare.py"  # what makes every file in data_dir


def read_jsonl_lines(path, required: dict[str, type] | tuple = (),
                     maker: str = PREPARE) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a jsonl file, checking that each is a JSON
    object with the `required` keys/types. `maker` is the command that makes the file, for the errors."""
    path = Path(path)
    req = required if isinstance(required, dict) else {k: object for k in required}
    rows = []
    for n, line in enumerate(decode_utf8(read_bytes(path, maker), path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); expected one object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        check_keys(row, req, f"{path}:{n}")
        rows.append((n, row))
    if not rows:
        raise DataError(f"{path}: no records, the file is empty (make it with: {maker})")
    return rows


def read_jsonl(path, required: dict[str, type] | tuple = (), maker: str = PREPARE) -> list[dict]:
    """The objects of a jsonl file, checked as in read_jsonl_lines."""
    return [row for _, row in read_jsonl_lines(path, required, maker)]


def write_jsonl(path, rows) -> None:
    """Replace `path` with one JSON object per row, atomically; never with an empty file."""
    if not rows:
        kept = "the previous file is kept" if Path(path).exists() else "no file made"
        raise DataError(f"{path}: not written: no records to write ({kept})")
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_text(path, maker: str = PREPARE) -> str:
    return files.read_text(path, maker)


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """`t` (a batch made on the CPU) on `device`. Bound for a GPU it goes through pinned (page-locked) memory
    with non_blocking=True: the copy is queued behind the GPU's work instead of the CPU waiting for it, and
    a pageable copy would first be staged through a pinned buffer anyway. On the CPU: `t` itself."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def pad(seqs: list[list[int]], value: int, left: bool = False, length: int | None = None) -> torch.Tensor:
    """(B, L) long tensor of `seqs` padded with `value` on the right (or the left) to `length`."""
    L = max(len(s) for s in seqs) if length is None else length
    out = torch.full((len(seqs), L), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:L]
        if left:
            out[i, L - len(s) :] = torch.tensor(s, dtype=torch.long)
        else:
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def sft_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int, block_size: int):
    """Right-padded (inputs, targets, loss_mask), each (B, T), from (ids, response_mask) pairs.

    Next-token prediction: inputs = ids[:-1], targets = ids[1:]; the loss counts a target only when it
    is a response token (or the EOS), so the model is never trained to write the prompt (SFT).
    """
    ids = [p[0][: block_size + 1] for p in pairs]
    masks = [p[1][: block_size + 1] for p in pairs]
    x = pad([s[:-1] for s in ids], pad_id)
    y = pad([s[1:] for s in ids], pad_id)
    m = pad([s[1:] for s in masks], 0)
    return x, y, m.float()


def lm_batches(tokens: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator,
               source: str = "the corpus"):
    """Endless random windows of a token stream (pretraining), as (inputs, targets, mask)."""
    n = len(tokens) - block_size - 1
    if n <= 0:
        raise DataError(f"{source}: {len(tokens)} tokens, fewer than block_size + 2 = {block_size + 2} "
                        f"(expected a longer corpus, or a smaller --block_size)")
    while True:
        ix = torch.randint(n, (batch_size,), generator=generator)
        x = torch.stack([tokens[i : i + block_size] for i in ix])
        y = torch.stack([tokens[i + 1 : i + 1 + block_size] for i in ix])
        yield x, y, torch.ones_like(y, dtype=torch.float)


def load_world(data_dir):
    """The World (and so the gold labeler) that `data/prepare.py` generated the data from."""
    meta = read_json(Path(data_dir) / "meta.json", f"python data/prepare.py --out_dir={data_dir}",
                     {"seed": int, "sloppy_frac": (int, float)})
    return World(seed=meta["seed"], sloppy_frac=float(meta["sloppy_frac"]))


def read_prompts(data_dir, split: str) -> list[dict]:
    """The prompts of one split (train, val or test); a split with none is an error, not an empty list."""
    path = Path(data_dir) / "prompts.jsonl"
    rows = [r for r in read_jsonl(path, {"prompt": str, "category": str, "split": str})
            if r["split"] == split]
    if not rows:
        raise DataError(f"{path}: no prompts of the '{split}' split (expected train, val and test prompts; "
                        f"make them with: {PREPARE})")
    return rows


def _indices(xs, n: int) -> bool:
    """Is `xs` a list of indices into n responses?"""
    return isinstance(xs, list) and all(type(i) is int and 0 <= i < n for i in xs)  # not 1.0, not True


def read_comparisons(path, maker: str = "python train_rm.py --resample=true") -> list[dict]:
    """Comparisons in either format, as {"prompt", "responses", "ranking"} (ranking best first).

    `{"prompt", "responses": [...], "ranking": [i, ...]}` (K-way, InstructGPT) or the common pair format
    `{"prompt", "chosen", "rejected"}` (read as K = 2; an optional `"finished": [bool, bool]` says which of
    the two ended with EOS; chosen and rejected must differ). A K-way record may list `"ties": [[i, j], ...]`,
    pairs of responses the labeler found equally good (their order in `ranking` then means nothing).
    A bad line names the file and line; `maker` is the command that makes the file.
    """
    path = Path(path)
    out = []
    for n, row in read_jsonl_lines(path, {"prompt": str}, maker):
        if "chosen" in row and "rejected" in row:
            if not (isinstance(row["chosen"], str) and isinstance(row["rejected"], str)):
                raise DataError(f"{path}:{n}: 'chosen' and 'rejected' must be strings")
            fin = row.get("finished")
            if fin is not None and not (isinstance(fin, list) and len(fin) == 2
                                        and all(isinstance(f, bool) for f in fin)):
                raise DataError(f"{path}:{n}: 'finished' must be [true/false, true/false] (chosen, "
                                f"rejected), got {fin}")
            if row["chosen"] == row["rejected"] and fin in (None, [True, True], [False, False]):
                raise DataError(f"{path}:{n}: 'chosen' and 'rejected' are the same answer "
                                f"({row['chosen'][:40]!r}); expected two different answers, the better one "
                                "first")
            out.append({"prompt": row["prompt"], "responses": [row["chosen"], row["rejected"]],
                        "ranking": [0, 1],
                        "ties": [], **({"finished": fin} if fin is not None else {})})
            continue
        resp, rank = row.get("responses"), row.get("ranking")
        if not (isinstance(resp, list) and all(isinstance(r, str) for r in resp) and len(resp) >= 2):
            raise DataError(f"{path}:{n}: expected 'responses' (a list of ≥2 strings) "
                            "or 'chosen'/'rejected'")
        if not (_indices(rank, len(resp)) and sorted(rank) == list(range(len(resp)))):
            raise DataError(f"{path}:{n}: 'ranking' must be a permutation of 0..{len(resp) - 1}, got {rank}")
        ties = row.get("ties", [])
        if not (isinstance(ties, list)
                and all(_indices(t, len(resp)) and len(t) == 2 and t[0] != t[1] for t in ties)):
            raise DataError(f"{path}:{n}: 'ties' must be a list of [i, j] pairs of two different response "
                            f"indices in 0..{len(resp) - 1}, got {ties}")
        off = row.get("off_prompt", [])  # responses written for other prompts (train_rm.py --off_prompt)
        if not (_indices(off, len(resp)) and len(set(off)) == len(off)):
            raise DataError(f"{path}:{n}: 'off_prompt' must be a list of distinct response indices in "
                            f"0..{len(resp) - 1}, got {off}")
        fin = row.get("finished")
        if fin is not None and not (isinstance(fin, list) and len(fin) == len(resp)
                                    and all(isinstance(f, bool) for f in fin)):
            raise DataError(f"{path}:{n}: 'finished' must be a list of {len(resp)} true/false values, "
                            f"one per response, got {fin}")
        out.append({**row, "prompt": row["prompt"], "responses": resp, "ranking": rank, "ties": ties})
    return out


def subgroup(g: dict, keep: list[int]) -> dict:
    """The comparison group `g` restricted to the responses at indices `keep`: ranking, ties and
    `finished` carried over and renumbered (the labeler's order among the kept responses is unchanged)."""
    new = {old: i for i, old in enumerate(keep)}
    out = {**g, "responses": [g["responses"][i] for i in keep],
           "ranking": [new[i] for i in g["ranking"] if i in new],
           "ties": [[new[i], new[j]] for i, j in g.get("ties", ()) if i in new and j in new]}
    if g.get("finished") is not None:
        out["finished"] = [g["finished"][i] for i in keep]
    if "off_prompt" in g:
        out["off_prompt"] = [new[i] for i in g["off_prompt"] if i in new]
    return out


def held_out(prompt: str, val_frac: float) -> bool:
    """Whether a prompt's groups are held out: decided by the prompt alone (a hash), so that a group held out
    in round 1 stays held out when later rounds pool it, and every round's reward model is measured on
    groups it never trained on."""
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) / 16**8 < val_frac


def split_groups(groups: list[dict], val_frac: float, rng) -> tuple[list[dict], list[dict]]:
    """(training groups shuffled by `rng`, held-out groups): a group is held out when its prompt is
    (held_out). The reward model of every round and DPO split alike: each is measured on groups it never
    trained on, and DPO holds out exactly the groups the reward model did."""
    val = [g for g in groups if held_out(g["prompt"], val_frac)]
    train = [g for g in groups if not held_out(g["prompt"], val_frac)]
    rng.shuffle(train)
    if not train or not val:
        raise DataError(f"{len(groups)} ranked group(s): {len(train)} for training and {len(val)} held out "
                        f"(val_frac {val_frac}); expected both (raise --n_prompts)")
    return train, val


# ---------------------------------------------------------------------------------- DPO's preference pairs
def preference_pairs(g: dict, off_prompt: bool = True) -> list[tuple[int, int]]:
    """(chosen, rejected) response indices of every pair a ranked group orders: for ranking positions
    a < c, the response ranked a is preferred to the one ranked c -- C(K, 2) pairs, in ranking order, less:
    - the ties (pairs the labeler found equally good: its order between them is a coin flip),
    - pairs of two identical answers (same text, same `finished`: no preference to learn),
    - with off_prompt=False, every pair with one of the group's "off_prompt" responses (answers written
      for another prompt, see train_rm.collect_comparisons).
    g is a group as read_comparisons returns it: "responses", "ranking" (indices, best first) and the
    optional "ties" ([i, j] either way round), "finished" (absent: every response ended) and "off_prompt"
    (absent: none, as in every group of a pair file)."""
    fin = g.get("finished") or [True] * len(g["responses"])
    tied = {frozenset(t) for t in g.get("ties", ())}
    off = set() if off_prompt else set(g.get("off_prompt", ()))
    rank = g["ranking"]
    return [(i, j) for a, i in enumerate(rank) for j in rank[a + 1 :]
            if frozenset((i, j)) not in tied and not ({i, j} & off)
            and (g["responses"][i], fin[i]) != (g["responses"][j], fin[j])]


def pair_records(groups: list[dict], off_prompt: bool = True) -> list[dict]:
    """Every group's pairs in the common format, {"prompt", "chosen", "rejected", "finished": [c, r]}:
    what read_comparisons reads back as one K = 2 group per pair."""
    out = []
    for g in groups:
        fin = g.get("finished") or [True] * len(g["responses"])
        out += [{"prompt": g["prompt"], "chosen": g["responses"][i], "rejected": g["responses"][j],
                 "finished": [fin[i], fin[j]]} for i, j in preference_pairs(g, off_prompt)]
    return out


def preference_sequences(groups: list[dict], tok, block_size: int, off_prompt: bool = True):
    """One DPO batch: every response of `groups` that takes part in a pair, once (a response of a K-way
    group is in up to K - 1 pairs: its log-prob is computed once and shared), and the pairs as row indices.

    Rows are prompt + response (+ EOS if it finished), right-padded; a row longer than block_size keeps its
    end (as ranked_sequences). Response log-probs are read from column P = the shortest prompt on (shorter
    prompts' other rows are masked), so no padding ever sits between a prompt and its response.
    Returns tokens (N, L), attention mask (N, L) bool, P, response mask (N, L - P) bool (1 exactly on the
    response tokens and EOS of each row, aligned with tokens[:, P:]), chosen (M,) and rejected (M,) row
    indices, and the (group index, response index) of each row.
    """
    seqs, starts, keys, chosen, rejected = [], [], [], [], []
    for b, g in enumerate(groups):
        pairs = preference_pairs(g, off_prompt)
        fin = g.get("finished") or [True] * len(g["responses"])
        row = {}
        for i in sorted({i for pair in pairs for i in pair}):
            ids, resp_mask = tok.pair_ids(g["prompt"], g["responses"][i])
            if not fin[i]:
                ids, resp_mask = ids[:-1], resp_mask[:-1]  # no EOS: the sample was cut off
            cut = max(0, len(ids) - block_size)
            row[i] = len(seqs)
            seqs.append(ids[cut:])
            starts.append(max(1, resp_mask.index(1) - cut) if 1 in resp_mask else len(ids) - cut)
            keys.append((b, i))
        chosen += [row[i] for i, _ in pairs]
        rejected += [row[j] for _, j in pairs]
    if not seqs:
        raise DataError(f"{len(groups)} ranked group(s) with no pair to learn from (every pair tied or "
                        "identical)")
    tokens = pad(seqs, tok.pad_id)
    L = tokens.shape[1]
    lengths, starts = torch.tensor([len(s) for s in seqs]), torch.tensor(starts)
    col = torch.arange(L).unsqueeze(0)
    attn = col < lengths.unsqueeze(1)
    P = int(starts.min())
    resp = (col >= starts.unsqueeze(1)) & attn  # (N, L): the response tokens of each row
    return tokens, attn, P, resp[:, P:], torch.tensor(chosen), torch.tensor(rejected), keys


def ranking_ties(g: dict, K: int) -> torch.Tensor:
    """(K, K) bool: [a, c] (a < c) is True when the responses at ranking positions a and c of group g were
    marked equally good (its optional "ties", given as response indices)."""
    tied = torch.zeros(K, K, dtype=torch.bool)
    pos = {r: a for a, r in enumerate(g["ranking"])}
    for i, j in g.get("ties", ()):
        a, c = sorted((pos[i], pos[j]))
        tied[a, c] = True
    return tied


def ranked_sequences(groups: list[dict], tok, block_size: int):
    """Token batch for the reward model: every response of every group, in ranking order (best first).

    Returns tokens (B*K, L) right-padded, attention mask (B*K, L), valid (B, K) for groups with fewer
    than K responses, and tied (B, K, K): tied[b, a, c] is True when the responses at ranking positions
    a and c were marked equally good (a group's optional "ties"). Responses that never ended
    (`finished` False) get no EOS appended.
    """
    K = max(len(g["responses"]) for g in groups)
    seqs, valid = [], []
    tied = torch.zeros(len(groups), K, K, dtype=torch.bool)
    for b, g in enumerate(groups):
        fin = g.get("finished") or [True] * len(g["responses"])
        row = []
        for i in g["ranking"]:
            ids, _ = tok.pair_ids(g["prompt"], g["responses"][i])
            row.append((ids if fin[i] else ids[:-1])[-block_size:])
        valid.append([1] * len(row) + [0] * (K - len(row)))
        seqs += row + [[tok.pad_id]] * (K - len(row))
        tied[b] = ranking_ties(g, K)
    tokens = pad(seqs, tok.pad_id)
    lengths = torch.tensor([len(s) for s in seqs])
    mask = torch.arange(tokens.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    return tokens, mask, torch.tensor(valid, dtype=torch.bool), tied


def corpus_tokens(data_dir, tok, tail_frac: float = 1.0) -> torch.Tensor:
    """The pretraining corpus as one token stream: documents (stripped) each followed by EOS.

    tail_frac < 1 keeps only the last fraction of documents (the held-out end used for evaluation).
    One definition for pretraining, PPO-ptx and the alignment-tax measure, so they see the same text.
    """
    path = Path(data_dir) / "corpus.txt"
    docs = [d.strip() for d in read_text(path).split(EOT) if d.strip()]
    if not docs:
        raise DataError(f"{path}: no documents (expected text documents separated by {EOT}; make it with: "
                        f"{PREPARE})")
    if tail_frac < 1.0:
        docs = docs[-max(1, int(len(docs) * tail_frac)) :]
    # one document at a time: tiktoken's encode_ordinary_batch hands each document to a pool of 8 threads,
    # 5x slower on 2 cores (40,000 tiny-preset documents: 4.1 s against 0.8 s, the same tokens;
    # bench/NOTES.md)
    return torch.tensor([t for doc in docs for t in tok.enc.encode_ordinary(doc) + [tok.eos_id]],
                        dtype=torch.long)


def text_batches(tok, prompts: list[str], outs: list[tuple[str, bool]], block_size: int, batch_size: int):
    """Yield (start, tokens, mask) for (prompt, (response, finished)) texts, `batch_size` rows at a time:
    right-padded prompt+response sequences (EOS only where the response finished)."""
    for i in range(0, len(prompts), batch_size):
        groups = [{"prompt": p, "responses": [r], "ranking": [0], "finished": [f]}
                  for p, (r, f) in zip(prompts[i : i + batch_size], outs[i : i + batch_size])]
        tokens, mask, _, _ = ranked_sequences(groups, tok, block_size)
        yield i, tokens, mask


def read_state(path) -> dict:
    """The pipeline's records {stage: record} in `path` ({} before any stage finished); a file that is
    not such records is one line naming it and the line where its JSON breaks."""
    path = Path(path)
    if not path.exists():
        return {}
    state = read_json(path, "python -m nanorlhf --force=true")
    for name, record in state.items():
        if not isinstance(record, dict):
            raise DataError(f"{path}: the record of '{name}' is a {type(record).__name__}, expected an "
                            "object; remake it with: python -m nanorlhf --force=true")
    return state
