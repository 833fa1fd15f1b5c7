"""Batching, memory planning and flag parsing."""
import argparse

import pytest

from common.flags import add_flag, parse_bytes
from generator_service.planner import MemoryPlanner
from reward_service.batching import batches_by_token_budget


def test_batches_respect_the_token_budget_and_cover_every_item_once():
    lengths = [5, 50, 7, 30, 31, 6, 200, 8]
    batches = batches_by_token_budget(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 64
    assert [6] in batches  # longer than the budget: alone


def test_planner_shares_the_prompt_and_divides_the_rest():
    planner = MemoryPlanner(budget_bytes=1000 * 100, bytes_per_token=100, max_batch_size=64)
    assert planner.capacity(prompt_tokens=200, rows=8, max_new_tokens=500) == 100
    assert planner.capacity(prompt_tokens=200, rows=4, max_new_tokens=500) == 200
    assert planner.capacity(prompt_tokens=200, rows=4, max_new_tokens=150) == 150
    assert planner.max_rows(prompt_tokens=200, tokens_per_row=10) == 64  # the batch limit
    assert planner.max_rows(prompt_tokens=200, tokens_per_row=100) == 8
    assert planner.max_rows(prompt_tokens=2000, tokens_per_row=1) == 0


def test_sizes_and_environment_fallbacks(monkeypatch):
    assert parse_bytes("2GiB") == 2 * 1024**3
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("1e6") == 10**6
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bytes("lots")
    monkeypatch.setenv("SPECREJ_TEST_PORT", "1234")
    parser = argparse.ArgumentParser()
    add_flag(parser, "port", env="SPECREJ_TEST_PORT", default=1, type=int, help="a port")
    assert parser.parse_args([]).port == 1234
    assert parser.parse_args(["--port", "9"]).port == 9
    assert "SPECREJ_TEST_PORT" in parser.format_help()
