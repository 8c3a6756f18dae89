"""The publisher's shelf: each artifact published once per broker, cleared by its last user."""

from __future__ import annotations

from fleet.publisher import _Shelf


def test_shelf_publishes_once_and_clears_with_the_last_user():
    shelf = _Shelf()
    assert shelf.claim("b:1", "x") and not shelf.claim("b:1", "x")
    assert shelf.claim("b:2", "x")  # another broker publishes its own copy
    assert not shelf.release("b:1", "x") and shelf.release("b:1", "x")
    assert shelf.claim("b:1", "x")  # published again for the next rollout
