"""`make reliability`'s scenarios, short: the same functions with small numbers, against
real service processes on the tiny checkpoint."""

import pytest

from bench import reliability

pytestmark = pytest.mark.slow


def test_soak_loses_nothing_and_stays_consistent(tiny_checkpoint, tmp_path):
    result = reliability.soak(tmp_path, str(tiny_checkpoint), seconds=8, clients=8)
    assert result["server_errors"] == 0 and not any(result["unexpected_statuses"].values())
    assert result["acknowledged"] > 20 and result["deleted"] > 0
    assert not result["lost"] and not result["unexpected_items"] and not result["duplicated"]
    assert result["consistent"]


def test_kill_9_during_enrolment_loses_nothing_acknowledged(tiny_checkpoint, tmp_path):
    result = reliability.kill_rounds(tmp_path, str(tiny_checkpoint), rounds=2)
    assert result["ok"] and result["present"] == result["acknowledged"] > 0, result


def test_slow_and_idle_clients_do_not_stop_searches(tiny_checkpoint, tmp_path):
    result = reliability.slow_clients(tmp_path, str(tiny_checkpoint), idle=100, slow_heads=10,
                                      slow_bodies=3, searches=10, header_timeout=1.0,
                                      body_timeout=2.0)
    assert result["search_statuses"] == [200] and result["search_max_ms"] < 5000, result
    assert result["idle_closed_by_server"] == 100 and result["slow_bodies_answered_408"] == 3


def test_a_full_file_system_is_507_and_recovers(tiny_checkpoint, tmp_path):
    result = reliability.full_disk(tmp_path, str(tiny_checkpoint))
    if result["ok"] is None:
        pytest.skip(result["skipped"])  # tests/api/test_errors.py injects ENOSPC instead
    assert result["ok"], result


def test_a_damaged_data_directory_is_reported_not_emptied(tiny_checkpoint, tmp_path):
    result = reliability.damaged_start(tmp_path, str(tiny_checkpoint))
    assert result["ok"], result
