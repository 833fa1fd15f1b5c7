"""The rejection logic alone: keep counts, ties, finished versus running, alpha edge values."""
import pytest

from coordinator.schedule import DecisionSchedule, Ranked, decide, rank, rejected_count


def candidates(scores, finished=()):
    return [Ranked(index, score, index in finished) for index, score in enumerate(scores)]


@pytest.mark.parametrize("live, alpha, rejected", [
    (16, 0.5, 8), (15, 0.5, 7), (10, 0.7, 7), (10, 0.9, 9), (128, 0.9, 115), (1, 0.9, 0), (2, 0.5, 1),
    (3, 0.3, 0), (8, 0.0, 0), (7, 0.999, 6),
])
def test_rejects_floor_of_alpha_times_live_and_keeps_at_least_one(live, alpha, rejected):
    assert rejected_count(live, alpha) == rejected
    decision = decide(candidates(range(live)), alpha)
    assert len(decision.rejected) == rejected
    assert len(decision.kept) == live - rejected >= 1


def test_keeps_the_highest_scores_and_reports_the_cutoff():
    decision = decide(candidates([0.1, 0.9, -1.0, 0.5, 0.3, 0.7]), 0.5)
    assert [c.index for c in decision.kept] == [1, 5, 3]
    assert sorted(c.index for c in decision.rejected) == [0, 2, 4]
    assert decision.cutoff_score == 0.5


def test_ties_are_broken_by_lower_index_deterministically():
    ordered = rank(candidates([1.0, 2.0, 1.0, 2.0, 1.0]))
    assert [c.index for c in ordered] == [1, 3, 0, 2, 4]
    decision = decide(candidates([1.0, 1.0, 1.0, 1.0]), 0.5)
    assert [c.index for c in decision.kept] == [0, 1]


def test_finished_candidates_are_ranked_with_running_ones_and_can_be_rejected():
    decision = decide(candidates([0.2, 0.8, 0.5, -3.0], finished={1, 3}), 0.5)
    assert [c.index for c in decision.kept] == [1, 2]
    assert decision.kept[0].finished and not decision.kept[1].finished
    assert [c.index for c in decision.rejected] == [0, 3]
    assert decision.rejected[1].finished  # a finished response with a low score is dropped too


def test_alpha_zero_rejects_nobody():
    decision = decide(candidates([3, 1, 2]), 0.0)
    assert not decision.rejected and len(decision.kept) == 3


def test_full_memory_forces_rejecting_a_running_candidate():
    # Only finished ones fall below the cut; with the cache full a running one must still go.
    scored = candidates([0.9, 0.8, -1.0, -2.0], finished={2, 3})
    assert all(c.finished for c in decide(scored, 0.5).rejected)
    forced = decide(scored, 0.5, memory_full=True)
    assert [c.index for c in forced.rejected if not c.finished] == [1]
    assert [c.index for c in forced.kept] == [0]


def test_memory_driven_schedule_decodes_until_the_cache_is_full():
    schedule = DecisionSchedule()
    assert schedule.trigger == "memory"
    assert schedule.next_stop(1, 256) == 0
    assert schedule.first_stop(256, memory_round_tokens=32) == 32


def test_interval_schedule_stops_at_multiples_capped_by_max_new_tokens():
    schedule = DecisionSchedule(every_tokens=16)
    assert [schedule.next_stop(p, 40) for p in (1, 15, 16, 31, 32, 39)] == [16, 16, 32, 32, 40, 40]
    assert schedule.first_stop(40, memory_round_tokens=32) == 16


def test_explicit_points_then_run_to_the_end():
    schedule = DecisionSchedule(every_tokens=16, points=(5, 20, 80))
    assert schedule.trigger == "schedule"
    assert [schedule.next_stop(p, 64) for p in (1, 5, 19, 20, 50)] == [5, 20, 20, 64, 64]


def test_best_of_n_has_no_decision_points():
    schedule = DecisionSchedule(every_tokens=8, enabled=False)
    assert schedule.next_stop(1, 100) == 100
    assert schedule.first_stop(100, memory_round_tokens=32) == 100


def test_doubling_schedule_decides_at_the_first_point_and_each_doubling():
    schedule = DecisionSchedule(first_tokens=32)
    stops, position = [], 1
    while position < 300:
        position = schedule.next_stop(position, 300)
        stops.append(position)
    assert stops == [32, 64, 128, 256, 300]
    assert schedule.trigger == "doubling"
    assert schedule.first_stop(300, memory_round_tokens=7) == 32


def test_doubling_resumes_after_a_decision_point_the_full_cache_forced():
    schedule = DecisionSchedule(first_tokens=32)
    assert schedule.next_stop(45, 512) == 64  # memory forced one at 45: the next doubling still comes at 64
    assert schedule.next_stop(64, 512) == 128
    assert schedule.next_stop(20, 24) == 24  # never beyond the longest response


def test_an_interval_or_explicit_points_take_precedence_over_doubling():
    assert DecisionSchedule(every_tokens=10, first_tokens=32).next_stop(1, 100) == 10
    assert DecisionSchedule(points=(5, 50), first_tokens=32).next_stop(6, 100) == 50


def test_without_any_schedule_only_the_full_cache_decides():
    schedule = DecisionSchedule()
    assert schedule.next_stop(1, 256) == 0 and schedule.trigger == "memory"
