"""A pytest plugin the grader loads (-p nanorlhf.assignments.pytest_seed): each test starts from the same
global RNG state. A few of the project's tests draw from torch's global generator without seeding it (their
assertions hold for any draw when the answer is right); seeded here, a wrong answer gets the same verdict on
every grade, not one that depends on which tests ran before."""

import random

import pytest
import torch


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    random.seed(0)
    torch.manual_seed(0)
