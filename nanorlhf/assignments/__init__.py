"""Classroom mode (outside the reading path): `python -m nanorlhf.assignments list | make | grade | selftest`.

exercises.py  the exercise table        source.py  ast surgery: blank, extract, transplant a body
checks.py     differential checks       bugs.py    the catalogue of wrong answers and right alternatives
__main__.py   the commands              pytest_seed.py  seeds each unit test the grader runs
checks_core.py      the checks' machinery: seeds, tolerances, Checker, compare, the inputs
checks_losses.py    the checks of the supervised and reward-model losses and the masks
checks_ppo.py       the checks of the PPO pieces: KL penalty, GAE, policy and value losses, PPO-ptx
checks_logprobs.py  the checks of the log-prob, preference-pair and DPO pieces
grading.py          the grading engine: runs the layers in a copy, scores, explains; makes the copies
ASSIGNMENTS.md is the guide for instructors and students.
"""
