"""The pipeline's runs in one table: which folder under out/ each model lives in and how the evaluation and
the report name it. Iterated RLHF adds a reward model and a PPO run per round: the last round's are `rm` and
`ppo` (what every later stage reads), round r before it `rm_r<r>` and `ppo_r<r>`."""

from __future__ import annotations

from dataclasses import dataclass, field

ROUNDS = {"micro": 2, "tiny": 2, "small": 2}  # each preset's number of iterated-RLHF rounds (--rounds=0)
PTX_COEF, BETA0_LR_SCALE = 1.0, 8.0  # the pipeline's --ptx_coef and --beta0_lr_scale, by default
CONTROL = ("--iterations=16",)  # the tiny preset's PPO-ptx and β = 0 runs


@dataclass(frozen=True)
class Run:
    folder: str  # under out/; also the stage's name in the pipeline and its --skip
    label: str  # its row in the evaluation and the report
    script: str  # the stage script that makes it
    flags: tuple[str, ...] = ()  # beyond the common ones ({ptx_coef}, {beta0_lr_scale}: run_flags)
    files: tuple[str, ...] = ("ckpt.pt", "history.json")  # what it writes into its folder
    by_preset: dict[str, tuple[str, ...]] = field(default_factory=dict)  # more flags on one preset


# The runs after the last round, each from SFT against the last reward model, in the pipeline's order.
OTHER_RUNS = (
    # the control runs' lessons show in fewer iterations than the headline's (bench/NOTES.md, "A pipeline
    # in ten minutes"): on the tiny preset they run 16
    Run("ppo_ptx", "PPO-ptx", "train_ppo.py", ("--ptx_coef={ptx_coef}",), by_preset={"tiny": CONTROL}),
    # β = 0 at 8× the learning rate: at the preset's rate the policy stays too close to SFT for the proxy
    # reward and the gold rating to part, and at 4× it takes more than 16 iterations (bench/NOTES.md,
    # "Preset choices", "A pipeline in ten minutes"); evaluated every 5 iterations for the over-optimisation
    # curve's points
    Run("ppo_beta0", "PPO β=0", "train_ppo.py", ("--init_kl_coef=0", "--adaptive_kl=false",
                                                 "--lr_scale={beta0_lr_scale}", "--run_name=ppo_beta0",
                                                 "--eval_interval=5"), by_preset={"tiny": CONTROL}),
    # the gold labeler as the reward: the ceiling a better reward model could reach
    Run("ppo_gold", "PPO, gold reward", "train_ppo.py", ("--reward=gold", "--run_name=ppo_gold")),
    # DPO on the comparisons the last reward model trained on: a method beside PPO
    Run("dpo", "DPO", "train_dpo.py", files=("ckpt.pt",)),
)
OTHER_POLICIES = {run.label: run.folder for run in OTHER_RUNS}
GOLD_REWARD_RUNS = {run.folder for run in OTHER_RUNS if "--reward=gold" in run.flags}  # not the RM's reward


def run_flags(run: Run, ptx_coef: float = PTX_COEF, beta0_lr_scale: float = BETA0_LR_SCALE,
              preset: str = "") -> list[str]:
    """`run`'s own flags with the pipeline's settings filled in, and its flags for `preset`."""
    flags = [*run.flags, *run.by_preset.get(preset, ())]
    return [f.format(ptx_coef=ptx_coef, beta0_lr_scale=beta0_lr_scale) for f in flags]


def round_runs(r: int, rounds: int) -> tuple[str, str]:
    """(reward model, PPO run) folders of round r of `rounds`."""
    return ("rm", "ppo") if r == rounds else (f"rm_r{r}", f"ppo_r{r}")


def ppo_label(r: int, rounds: int) -> str:
    """The evaluation's name of round r's PPO policy: "PPO" for the last round (the headline)."""
    return "PPO" if r == rounds else f"PPO, round {r}"


def policy_rows(rounds: int) -> dict[str, str]:
    """{evaluation row: folder} of every policy the pipeline trains after SFT, in the report's order."""
    ppo_runs = {ppo_label(r, rounds): round_runs(r, rounds)[1] for r in range(1, rounds + 1)}
    return {**ppo_runs, **OTHER_POLICIES}
