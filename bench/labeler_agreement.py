"""How often two noisy rankings by the simulated labeler agree, pair by pair (the measure the reward model's
"a second labeler agrees" ceiling uses, here on the world's own written answers of mixed quality).

    python bench/labeler_agreement.py              # 200 train prompts, 4 answers each, seed 0
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nanorlhf.world import QUALITIES, World  # noqa: E402


def main(n_prompts: int = 200, k: int = 4, seed: int = 0) -> None:
    world, rng = World(seed), random.Random(seed)
    per_group, agree, pairs = [], 0, 0
    for d in world.prompts(n_prompts, "train"):
        responses = [world.write_response(d["prompt"], rng.choice(QUALITIES), rng) for _ in range(k)]
        ranking = world.labeler.rank(d["prompt"], responses, rng)
        a, n = world.labeler.agreement_counts(d["prompt"], responses, ranking, rng)
        if n:
            per_group.append(a / n)
            agree, pairs = agree + a, pairs + n
    print(f"a second noisy ranking agrees with the first on {agree / pairs:.1%} of {pairs} untied pairs "
          f"(mean over {len(per_group)} groups: {sum(per_group) / len(per_group):.1%})")


if __name__ == "__main__":
    main()
