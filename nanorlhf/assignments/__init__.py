"""Classroom mode (outside the reading path): `python -m nanorlhf.assignments list | make | grade | selftest`.

exercises.py  the exercise table        source.py  ast surgery: blank, extract, transplant a body
checks.py     differential checks       bugs.py    the catalogue of wrong answers and right alternatives
__main__.py   the commands              pytest_seed.py  seeds each unit test the grader runs
ASSIGNMENTS.md is the guide for instructors and students.
"""
