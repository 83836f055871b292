"""Classroom mode (outside the reading path): `python -m nanorlhf.assignments list | make | grade | selftest`.

exercises.py  the exercise table        source.py  ast surgery: blank, extract, transplant a body
checks.py     differential checks       bugs.py    the catalogue of wrong answers (selftest, --bug)
__main__.py   the commands; ASSIGNMENTS.md is the guide for instructors and students.
"""
