"""The publisher's pure parts: the per-deployment resend limit and the shared-artifact shelf."""

from __future__ import annotations

from fleet.publisher import ResendLimit, _Shelf


def test_resend_limit_per_chunk_interval_and_budget():
    lim = ResendLimit(total_chunks=10, interval=1.0, factor=2.0)
    assert lim.allow("a", 0, now=0.0)
    assert not lim.allow("a", 0, now=0.5)  # the same chunk again within the interval
    assert lim.allow("a", 1, now=0.5) and lim.allow("a", 0, now=1.0)
    granted = sum(lim.allow("a", i % 10, now=10.0 + i) for i in range(100))
    assert lim.used == 20 and granted == 17  # the budget: 2x the chunk count in all
    assert lim.refused == 1 + 83


def test_forged_flood_costs_one_resend_per_chunk_per_second():
    lim = ResendLimit(total_chunks=65)
    granted = sum(lim.allow("a", i, now=0.001 * k) for k in range(200) for i in range(65))
    assert granted == 65


def test_shelf_publishes_once_and_clears_with_the_last_user():
    shelf = _Shelf()
    assert shelf.claim("b:1", "x") and not shelf.claim("b:1", "x")
    assert shelf.claim("b:2", "x")  # another broker publishes its own copy
    assert not shelf.release("b:1", "x") and shelf.release("b:1", "x")
    assert shelf.claim("b:1", "x")  # published again for the next rollout
