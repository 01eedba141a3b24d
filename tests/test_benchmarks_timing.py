"""cvkit/benchmarks/timing.py: round-robin timing runs every function once per round, in a new
order each round, each timed call right after its own untimed ``settle`` calls."""
from __future__ import annotations

import pytest

from cvkit.benchmarks.timing import interleaved_median_seconds, interleaved_seconds, median_seconds


def test_interleaved_rounds_order_and_settle_calls():
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abcd"}
    times = interleaved_seconds(fns, repeats=6, warmup=1, settle=1)
    assert {k: len(v) for k, v in times.items()} == {k: 6 for k in "abcd"}
    assert all(t >= 0 for v in times.values() for t in v)
    assert calls[:4] == list("abcd")  # warm-up
    rounds = [calls[4 + 8 * r: 12 + 8 * r] for r in range(6)]
    assert len(calls) == 4 + 8 * 6
    orders = []
    for r in rounds:
        assert r[0::2] == r[1::2]  # each timed call follows an untimed call of the same function
        assert sorted(r[0::2]) == list("abcd")  # every function once per round
        orders.append("".join(r[0::2]))
    assert len(set(orders)) > 1  # the order changes between rounds
    assert len({o[0] for o in orders}) > 1  # not always the same function first


def test_median_of_interleaved_times():
    import time

    fns = {"fast": lambda: None, "slow": lambda: time.sleep(0.01)}
    med = interleaved_median_seconds(fns, repeats=3, warmup=0)
    assert med["slow"] >= 0.01 > med["fast"]


def test_no_rounds_is_an_error():
    """No timed round has no median (it was a StatisticsError, or empty lists)."""
    fns = {"a": lambda: None}
    for call in (lambda: interleaved_seconds(fns, repeats=0),
                 lambda: interleaved_median_seconds(fns, repeats=0),
                 lambda: median_seconds(fns["a"], repeats=0)):
        with pytest.raises(ValueError, match=r"repeats must be an integer >= 1, got 0"):
            call()
    with pytest.raises(ValueError, match=r"settle must be an integer >= 0, got -1"):
        interleaved_seconds(fns, repeats=1, settle=-1)
