"""Shared fixtures: ``one_thread`` for tests of many tiny models (on this project's shared
2-core machines, a second torch thread only adds synchronisation to microsecond-sized ops)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
