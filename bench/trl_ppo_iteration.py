"""The "usual library" baseline of issue 7: one PPO iteration of TRL's PPOTrainer at the shape that
`python bench/stages.py --part=ppo` times, on the same machine, so the two figures can be compared.

Not part of nanorlhf and not run by the tests: it needs TRL 0.19.1 (the current TRL, 1.16, has no PPOTrainer).

    python -m venv --system-site-packages /tmp/trlenv && . /tmp/trlenv/bin/activate
    pip install trl==0.19.1 transformers==4.53.3
    python bench/trl_ppo_iteration.py 6          # 6 iterations; the first is the warm-up
    python bench/trl_ppo_iteration.py 6 bf16     # the same with TRL's bf16=True (CPU bf16 autocast)

bench/vs_trl.py runs this beside `python bench/stages.py --part=ppo` in one alternating sequence, in fp32 and
in bf16, and prints the ratios. The shape, and how it matches ours: `main`.
"""

import random
import sys
import time

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models
import transformers
import trl
from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast,
                          TrainerCallback)
from trl import PPOConfig, PPOTrainer

VOCAB = 4096


class IterationClock(TrainerCallback):
    """PPOTrainer calls on_step_end once per iteration (rollout + all PPO epochs)."""

    def __init__(self):
        self.stamps = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps.append(time.perf_counter())


def main(iterations: int, dtype: str = "fp32") -> None:
    """Shape (as bench/stages.py): GPT-2 d=128, 4 layers, 4 heads, vocabulary 4096, context 256; policy,
    frozen reference, reward model and value model all of that shape; 64 prompts of 16-32 random tokens; 48
    new tokens with no early stop; 4 PPO epochs x 4 minibatches of 16; fp32 (or bf16=True) on the CPU with 2
    threads. TRL's rollout batch is per_device_train_batch_size x gradient_accumulation_steps (16 x 4 = 64),
    split into num_mini_batches = 4 minibatches of 16, each one forward/backward of 16 rows, as ours. One
    difference: with gradient accumulation 4, TRL steps the optimisers once per 4 minibatches where we step
    once per minibatch -- AdamW on 1.35M parameters is a negligible share of the time either way."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = random.Random(0)
    # a word-level tokenizer over ids t0..t4095: the prompts are random ids, the text never matters
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0")),
        pad_token="t1", eos_token="t2")
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=256, n_embd=128, n_layer=4, n_head=4, pad_token_id=1,
                     eos_token_id=2, bos_token_id=2, num_labels=1)
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    reward, value = GPT2ForSequenceClassification(cfg), GPT2ForSequenceClassification(cfg)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(rng.randint(16, 32))] for _ in range(64)]
    data = Dataset.from_dict({"input_ids": prompts})
    args = PPOConfig(output_dir="/tmp/trl_ppo_iteration", per_device_train_batch_size=16,
                     gradient_accumulation_steps=4, num_mini_batches=4, num_ppo_epochs=4, response_length=48,
                     stop_token=None, temperature=1.0, local_rollout_forward_batch_size=64,
                     total_episodes=64 * iterations, num_sample_generations=0, report_to="none",
                     save_strategy="no", use_cpu=True, seed=0, bf16=dtype == "bf16")
    clock = IterationClock()
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=data, eval_dataset=data, value_model=value, callbacks=[clock])
    trainer.train()
    seconds = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    timed = sorted(seconds[1:])
    print(f"TRL {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {dtype}")
    print("seconds per iteration (the first is the warm-up):", " ".join(f"{s:.2f}" for s in seconds))
    print(f"median of {len(timed)} after the warm-up: {timed[len(timed) // 2]:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6, sys.argv[2] if len(sys.argv) > 2 else "fp32")
