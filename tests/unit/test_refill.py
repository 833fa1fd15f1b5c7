"""Refill: which survivors the branches continue, and which requests may ask for it."""
import pytest

from common.errors import FieldError
from coordinator.refill import branch_parents
from coordinator.request import Limits, plan_request
from specrej.v1 import coordinator_pb2 as pb


@pytest.mark.parametrize("survivors, initial_n, parents", [
    ([7, 3], 8, [7, 3, 7, 3, 7, 3]),  # best first, round robin
    ([5, 1, 2], 4, [5]),  # only the rows the rejections freed
    ([4, 0, 2, 6], 4, []),  # nothing freed
    ([], 8, []),  # every survivor had finished: none is a parent
    ([9], 3, [9, 9]),
])
def test_branches_go_to_the_running_survivors_best_first_in_turn(survivors, initial_n, parents):
    assert branch_parents(survivors, initial_n) == parents


def request(**fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(**{"prompt": "Name three colors.", "n": 8, "max_new_tokens": 128, **fields})


def test_refill_is_off_unless_asked_and_then_reserves_room_for_whole_responses():
    plain = plan_request(request())
    assert not plain.refill and plain.min_tokens_before_full == 64  # the first decision point
    refilled = plan_request(request(refill=True))
    assert refilled.refill and refilled.min_tokens_before_full == 128  # n candidates run to the end


@pytest.mark.parametrize("fields", [
    dict(method=pb.BEST_OF_N),
    dict(first_decision_tokens=0),  # memory-driven decision points alone
])
def test_refill_without_decision_points_at_token_positions_is_refused_naming_it(fields):
    with pytest.raises(FieldError) as refused:
        plan_request(request(refill=True, **fields), Limits())
    assert refused.value.field == "refill"
