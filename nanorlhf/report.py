"""Figures and the markdown report: Figure-1-style win-rates, PPO curves, over-optimisation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from nanorlhf.checkpoint import maker
from nanorlhf.config import check_config, parse_config, run_main
from nanorlhf.data import DataError, check_keys, read_json, read_state
from nanorlhf.evaluation import BREAKDOWN, KINDS, learned
from nanorlhf.files import atomic_write, lock_folder, with_locks
from nanorlhf.plots import line_plots, save
from nanorlhf.runs import GOLD_REWARD_RUNS, policy_rows, ppo_label

import matplotlib.pyplot as plt  # noqa: E402 (after nanorlhf.plots, which picks the Agg backend)


def ppo_curves(path, run_name: str, history: list[dict], evals: list[dict], reward: str = "model") -> None:
    """Reward (the RM's, or the gold labeler's with --reward=gold), gold rating, KL and entropy over a PPO
    run."""
    its = [h["iteration"] for h in history]
    ev_its = [e["iteration"] for e in evals]
    ylabel, label = (("reward (gold utility - 4, rating units)", "gold reward (rollouts)")
                     if reward == "gold" else
                     ("reward (RM score, normalised)", "RM reward (rollouts)"))
    line_plots(path, f"PPO run '{run_name}'", "PPO iteration", [
        (ylabel, [(its, [h["rm_score"] for h in history], label)]),
        ("gold labeler rating (1-7)",
         [(ev_its, [e["gold_rating"] for e in evals], "gold rating (held-out prompts)")]),
        ("KL to SFT (nats / response)",
         [(its, [h["kl"] for h in history], "k1"), (its, [h["kl_k3"] for h in history], "k3")]),
        ("entropy (nats / token)", [(its, [h["entropy"] for h in history], "policy entropy")]),
    ])


def sqrt_kl(kl: float) -> float:
    return math.sqrt(max(0.0, kl))


def winrate_chart(path, models: dict) -> None:
    """InstructGPT Figure 1 in miniature: win-rate against SFT with 95% CIs, one bar per model."""
    names = list(models)
    rates = [models[n]["win_rate"] * 100 for n in names]
    err = [[(models[n]["win_rate"] - models[n]["ci_low"]) * 100 for n in names],
           [(models[n]["ci_high"] - models[n]["win_rate"]) * 100 for n in names]]
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    colors = ["#999999" if n.startswith("base") else "#4c72b0" if n == "SFT" else "#55a868" if "gold" in n
              else "#dd8452" for n in names]
    # 2-line long names
    ax.bar([n.replace(", ", ",\n") for n in names], rates, yerr=err, capsize=5, color=colors)
    ax.axhline(50, color="black", lw=0.8, ls="--", label="as good as SFT")
    ax.set_ylabel("win-rate against SFT (%, 95% CI)")
    ax.set_xlabel("model (samples judged by the gold labeler on held-out test prompts)")
    ax.set_ylim(0, 100)
    ax.set_title("How often each model's output is preferred to the SFT model's")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save(fig, path)


def overoptimisation_chart(path, runs: dict, best_of_n: list[dict], points: dict | None = None) -> None:
    """Gold rating and RM reward against √KL (Gao et al. 2022): PPO runs' evaluations, best-of-n, and the
    final models that have no curve (DPO, the RM's best-of-n row) as single points {name: table row}."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, evals in runs.items():
        evals = sorted(evals, key=lambda e: e["kl"])  # a curve along KL, as in Gao et al.'s Figure 1
        xs = [sqrt_kl(e["kl"]) for e in evals]
        axes[0].plot(xs, [e["gold_rating"] for e in evals], marker="o", ms=3, label=name)
        axes[1].plot(xs, [e["rm_score"] for e in evals], marker="o", ms=3, label=name)
    if best_of_n:
        xs = [sqrt_kl(b["kl"]) for b in best_of_n]
        axes[0].plot(xs, [b["gold_rating"] for b in best_of_n], marker="s", ms=3, ls="--",
                     label="best-of-n (SFT)")
        axes[1].plot(xs, [b["rm_score"] for b in best_of_n], marker="s", ms=3, ls="--",
                     label="best-of-n (SFT)")
    for name, r in (points or {}).items():
        if r.get("kl_to_sft") is not None:
            axes[0].plot([sqrt_kl(r["kl_to_sft"])], [r["rating"]], marker="*", ms=10, ls="", label=name)
            axes[1].plot([sqrt_kl(r["kl_to_sft"])], [r["rm_score"]], marker="*", ms=10, ls="", label=name)
    axes[0].set_ylabel("gold labeler rating (1-7)")
    axes[1].set_ylabel("reward-model score (proxy)")
    for ax in axes:
        ax.set_xlabel("√KL(π || π_SFT)  (√nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Over-optimisation: the proxy reward keeps rising; the gold rating need not")
    fig.tight_layout()
    save(fig, path)


def _summary(models: dict, headroom: dict | None) -> list[str]:
    """The report's first paragraph: the headline and, in words, what PPO learned that SFT did not."""
    if "PPO" not in models:
        return []
    r = models["PPO"]
    text = (f"**PPO is preferred to SFT {r['win_rate']:.0%} of the time** [{r['ci_low']:.0%}, "
            f"{r['ci_high']:.0%}] by the gold labeler on {r['n']} test prompts.")
    changes = learned({k: v["breakdown"] for k, v in models.items() if "breakdown" in v}, "PPO")
    if changes:
        text += " What it does differently from SFT, in counts: " + "; ".join(changes[:5]) + "."
    if headroom:
        best = headroom["gold_best_of_n"][-1]
        text += (f" Before any RL, two SFT samples tie {headroom['sft_vs_sft_ties']:.0%} of the time and the "
                 f"gold labeler's own pick of {best['n']} SFT samples beats one {best['win_rate']:.0%} of "
                 "the time: the headroom the reward model and PPO can reach for.")
    return [text]


def _figure1_sample(samples: dict) -> list[str]:
    """InstructGPT's Figure 1 failure in this world: the base model answers an instruction with more."""
    for s in samples.get("base", []):
        if s.get("writes_instructions"):
            resp = s["response"].replace("\n", " ")[:200]
            return ["", f"The base model, asked *{s['prompt']!r}*, writes more instructions: *{resp!r}* -- "
                    "as GPT-3 "
                        "does in InstructGPT's Figure 1; SFT and PPO answer instead."]
    return []


def _headroom_section(headroom: dict | None, best_of_n: list[dict]) -> list[str]:
    if not headroom:
        return []
    lines = ["", "## Headroom before RL", "",
             f"On {headroom['n_prompts']} test prompts: two SFT samples tie "
             f"**{headroom['sft_vs_sft_ties']:.0%}** of the time. Best-of-n picked by the gold labeler among "
             "SFT's own samples (the ceiling of any reward model) and by the reward model (what the RM can "
             "find), against one SFT sample:", "",
             "| n | gold best-of-n win-rate vs SFT | 95% CI | RM best-of-n: gold rating | KL (nats) |",
             "|---|---|---|---|---|"]
    rm = {b["n"]: b for b in best_of_n}
    for row in headroom["gold_best_of_n"]:
        b = rm.get(row["n"], {})
        lines.append(f"| {row['n']} | {row['win_rate']:.1%} | [{row['ci_low']:.1%}, {row['ci_high']:.1%}] | "
                     f"{b.get('gold_rating', float('nan')):.2f} | "
                     f"{math.log(row['n']) - (row['n'] - 1) / row['n']:.2f} |")
    return lines


def _breakdown_section(models: dict) -> list[str]:
    names = [n for n in models if "breakdown" in models[n]]
    if not names:
        return []
    lines = ["", "## What each model gets right, in counts", "",
             "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, what, _, _ in BREAKDOWN:
        cells = [f"{models[n]['breakdown'][key][0]}/{models[n]['breakdown'][key][1]}" for n in names]
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return lines


def _rounds_section(ev: dict) -> list[str]:
    """Iterated RLHF, round by round: how well each round's reward model orders the samples of SFT and of the
    policy PPO trained against it, and how that policy fares against SFT."""
    shift, models = ev.get("rm_shift") or [], ev["models"]
    if not shift:
        return []
    rounds = ev["config"].get("rounds", 1)
    lines = ["", "## Iterated RLHF: a reward model that keeps up with the policy", "",
             "Each round ranks the latest policy's samples, trains a reward model on every round's "
             "comparisons and runs PPO again. Below, each round's reward model orders fresh samples (4 per "
             "val prompt, never trained on) of SFT and of the policy it trained; *gold order*: against the "
             "noise-free gold labeler; *labeler*: against one noisy ranking, beside how often a second "
             "noisy labeler agrees with it (the ceiling).", "",
             "| round | reward model | on SFT's samples: gold order / labeler (2nd labeler) | on its "
             "policy's samples: gold order / labeler (2nd labeler) | gap (gold order) | its PPO: win-rate "
             "vs SFT |",
             "|---|---|---|---|---|---|"]
    for row in shift:
        s, p = row["sft"], row["policy"]
        m = models.get(ppo_label(row["round"], rounds), {})
        wr = f"{m['win_rate']:.1%} [{m['ci_low']:.1%}, {m['ci_high']:.1%}]" if m else "—"
        lines.append(f"| {row['round']} | {row['rm']} | {s['gold_order_acc']:.1%} / {s['acc']:.1%} "
                     f"({s['labeler_agreement']:.1%}) | {p['gold_order_acc']:.1%} / {p['acc']:.1%} "
                     f"({p['labeler_agreement']:.1%}) | "
                     f"{(s['gold_order_acc'] - p['gold_order_acc']) * 100:+.1f} points | {wr} |")
    return lines


def _kinds_section(models: dict) -> list[str]:
    """Where the win comes from: each model against SFT, by the kind of prompt."""
    names = [n for n in models if "by_kind" in models[n] and n not in ("SFT", "base", "base few-shot")]
    if not names:
        return []
    lines = ["", "## Where the win comes from", "",
             "Each model's sample against SFT's on the same test prompt, by the kind of prompt: won / tied "
             "/ lost.", "",
             "| kind of prompt (n) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for kind, _ in KINDS:
        n = sum(models[names[0]]["by_kind"][kind])
        cells = ["/".join(str(c) for c in models[m]["by_kind"][kind]) for m in names]
        lines.append(f"| {kind} ({n}) | " + " | ".join(cells) + " |")
    return lines


NUMBER = (int, float)
MODEL_KEYS = {"n": int, "win_rate": NUMBER, "ci_low": NUMBER, "ci_high": NUMBER, "rating": NUMBER,
              "correct": NUMBER,
              "eos_rate": NUMBER, "rm_score": NUMBER, "corpus_loss": NUMBER, "per_category": dict}
HISTORY_KEYS = {"iteration": int, "rm_score": NUMBER, "kl": NUMBER, "kl_k3": NUMBER, "entropy": NUMBER}
EVALS_KEYS = {"iteration": int, "gold_rating": NUMBER, "kl": NUMBER}


def read_results(path, maker: str, required: dict, rows: dict) -> dict:
    """A results file (eval.json, a PPO run's history.json) through the one JSON reader, with the keys the
    report reads: `required` at the top, and for each {key: row keys} of `rows`, every row under it (the
    entries of a list or of a dict). A file not of that form is one line naming it."""
    obj = read_json(path, maker, required)
    for key, keys in rows.items():
        items = obj[key].items() if isinstance(obj[key], dict) else enumerate(obj[key])
        for name, row in items:
            where = f"{path}: {key} {name!r}"
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected an object, got {type(row).__name__}; remake it with: "
                                f"{maker}")
            check_keys(row, keys, where)
    return obj


def _figures(out, ev: dict) -> list[str]:
    """Every PPO run's curves, the win-rate chart and the over-optimisation chart; returns the runs drawn."""
    runs, curves = {}, []
    histories = {run: read_results(out / run / "history.json", maker(run), {"history": list, "evals": list},
                                   {"history": HISTORY_KEYS, "evals": EVALS_KEYS})
                 for run in policy_rows(ev["config"].get("rounds", 1)).values()
                 if (out / run / "history.json").exists()}
    for run, hist in histories.items():
        gold = run in GOLD_REWARD_RUNS
        if not gold:  # its rollout reward is the gold utility, not the proxy: no place on the proxy axis
            # iteration 0 is the SFT policy: its proxy reward is that of the first rollouts (before any
            # update)
            first = hist["history"][0]["rm_score"] if hist["history"] else None
            runs[run] = [e if e.get("rm_score") is not None else {**e, "rm_score": first}
                         for e in hist["evals"]
                         if e.get("rm_score") is not None or (e["iteration"] == 0 and first is not None)]
        ppo_curves(out / f"{run}_curves.png", run, hist["history"], hist["evals"],
                   "gold" if gold else "model")
        curves.append(run)
    winrate_chart(out / "winrate.png", ev["models"])
    points = {n: r for n, r in ev["models"].items() if n == "DPO" or n.startswith("RM best-of")}
    overoptimisation_chart(out / "overoptimisation.png", runs, ev.get("best_of_n", []), points)
    return curves


def _cost(r: dict, state: dict) -> str:
    """A row's own cost: its stage's wall seconds and the tokens it sampled while training (or at test
    time)."""
    # folder -> the stage that made it
    stage = {"base": "pretrain"}.get(r.get("run") or "", r.get("run") or "")
    wall = state.get(stage, {}).get("wall_s")
    if r.get("test_time_tokens"):
        return f"— | {r['test_time_tokens']:,} at test time"
    tokens = f"{r.get('sampled_tokens', 0):,}"
    return f"{wall:.0f} | {tokens}" if wall is not None else f"— | {tokens}"


def _results_table(models: dict, state: dict) -> list[str]:
    lines = [f"Test prompts: {next(iter(models.values()))['n'] if models else 0}; every model's samples are "
             "compared with the SFT model's by the gold labeler (ties count half). 95% Wilson "
             "intervals.", "",
             "![win-rate against SFT](winrate.png)", "",
             "| model | win-rate vs SFT | 95% CI | gold rating (1-7) | correct | EOS | RM score | KL to SFT "
             "(nats) | corpus loss | its training (s) | sampled tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in models.items():
        kl = "—" if r["kl_to_sft"] is None else f"{r['kl_to_sft']:.2f}"
        lines.append(f"| {name} | {r['win_rate']:.1%} | [{r['ci_low']:.1%}, {r['ci_high']:.1%}] | "
                     f"{r['rating']:.2f} | {r['correct']:.0%} | {r['eos_rate']:.0%} | {r['rm_score']:+.2f} | "
                     f"{kl} | {r['corpus_loss']:.3f} | {_cost(r, state)} |")
    rms = [(n, v["wall_s"]) for n, v in state.items() if n == "rm" or n.startswith("rm_")]
    lines += ["", "Corpus loss is the pretraining-corpus validation loss: what RLHF costs in language "
              "modelling (the alignment tax; PPO-ptx should pay less). *Its training*: the wall time of the "
              "model's own stage; every PPO run and DPO also stand on the reward-model rounds' comparisons"
              + (f" ({', '.join(f'{n} {s:.0f} s' for n, s in rms)}: sampling, labelling, training)"
                 if rms else "")
              + ". The RM's best-of-n trains nothing and samples n answers per prompt at test time; its KL "
              "is the bound log n − (n − 1)/n."]
    if any("gold" in name for name in models):
        lines += ["", "*PPO, gold reward* is the same PPO run with the gold labeler itself as the reward "
                  "(`train_ppo.py --reward=gold`): not RLHF -- no one has the gold labeler -- but the "
                  "ceiling of what a better reward model could give this policy in this many iterations."]
    return lines


def _category_section(models: dict) -> list[str]:
    cats = sorted({c for r in models.values() for c in r["per_category"]})
    lines = ["", "## Gold rating per category", "",
             "| model | " + " | ".join(cats) + " |", "|---" * (len(cats) + 1) + "|"]
    for name, r in models.items():
        lines.append(f"| {name} | "
                     + " | ".join(f"{r['per_category'].get(c, {}).get('rating', float('nan')):.1f}"
                                  for c in cats) + " |")
    return lines


def _samples_section(samples: dict) -> list[str]:
    lines = ["", "## Samples", ""]
    first = next(iter(samples.values()), [])
    for i, s in enumerate(first[:4]):
        lines += [f"**Prompt:** {s['prompt']}", "", "| model | response | rating |", "|---|---|---|"]
        for name, ss in samples.items():
            if i < len(ss):
                resp = ss[i]["response"].replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {name} | {resp[:200]}{'' if ss[i]['finished'] else ' *(no EOS)*'} | "
                             f"{ss[i]['rating']} |")
        lines.append("")
    return lines


def _wall_time_section(state: dict) -> list[str]:
    if not state:
        return []
    lines = ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v['wall_s']:.0f} |" for k, v in state.items()]
    lines.append(f"| total | {sum(v['wall_s'] for v in state.values()):.0f} |")
    return lines


def write_report(out_dir) -> str:
    """out/report.md and its figures from out/eval.json, the PPO histories and the pipeline state."""
    out = Path(out_dir)
    ev = read_results(out / "eval.json", "python -m nanorlhf.eval",
                      {"config": dict, "models": dict, "samples": dict},
                      {"models": MODEL_KEYS})
    models = ev["models"]
    state = read_state(out / "pipeline_state.json")
    curves = _figures(out, ev)

    lines = ["# nanorlhf report", "", *_summary(models, ev.get("headroom")), "",
             f"Compute precision: {ev['config'].get('dtype', 'fp32')} (`--dtype`; nanorlhf/precision.py).",
             "",
             *_results_table(models, state)]
    lines += _figure1_sample(ev["samples"])
    lines += _headroom_section(ev.get("headroom"), ev.get("best_of_n", []))
    lines += _rounds_section(ev)
    lines += _kinds_section(models)
    lines += _breakdown_section(models)
    lines += _category_section(models)
    lines += ["", "## PPO runs", ""]
    for run in curves:
        lines.append(f"![{run}]({run}_curves.png)")
    lines += ["", "## Over-optimisation", "",
              "Gold rating and reward-model score against √KL to the SFT model, for each PPO run's "
              "periodic evaluations and for best-of-n sampling from SFT (KL = log n − (n−1)/n). With "
              "β = 0 the proxy reward keeps rising while the gold rating stalls or falls: the policy "
              "learns what the reward model over-values.",
              "",
              "![over-optimisation](overoptimisation.png)"]
    lines += _samples_section(ev["samples"])
    lines += _wall_time_section(state)
    text = "\n".join(lines) + "\n"
    atomic_write(out / "report.md", text)
    return text


@dataclass
class ReportConfig:
    out_dir: str = "out"  # reads eval.json and the PPO histories here, writes report.md and figures


@with_locks
def main(argv=None) -> None:
    cfg = parse_config(ReportConfig, argv)
    check_config(cfg)
    lock_folder(cfg.out_dir)  # one writer: report.md and the figures
    write_report(cfg.out_dir)
    print(f"report: wrote {cfg.out_dir}/report.md and its figures")


if __name__ == "__main__":
    run_main(main)
