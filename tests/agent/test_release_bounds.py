"""Releases are bounded: one far ahead needs a signed release jump; a wedged device has a signed way out."""

from __future__ import annotations

import time

from agent.states import Accept, Context, Done, Transfer
from agent.storage import Storage
from core.protocol import RELEASE_AHEAD_MS, Artifact, Manifest
from core.signing import SigningKey, TrustStore

KEY = SigningKey.generate()
NOW = time.time()
NOW_MS = int(NOW * 1000)


def _ctx(tmp_path) -> tuple[Context, list]:
    reports: list = []
    ctx = Context(storage=Storage(tmp_path / "state"), device_id="pi-1", emit=reports.append,
                  trust=TrustStore([KEY.public_key()]), clock=lambda: NOW)
    return ctx, reports


def _offer(ctx: Context, dep: str, release: int, **flags) -> tuple[bool, str]:
    """(accepted, refusal reason) of one signed manifest; an accepted one frees the lock."""
    m = KEY.sign(Manifest(deployment_id=dep, device_id="pi-1", release=release, created_at=NOW,
                          model=Artifact.of(b"m" * 100, 1024), **flags))
    got = Accept(m.to_json()).run(ctx)
    if isinstance(got, Transfer):
        return True, ""
    assert isinstance(got, Done)
    return False, ""


def _last_reason(reports) -> str:
    return reports[-1].reason if reports else ""


def test_a_release_far_ahead_is_refused_and_does_not_wedge(tmp_path):
    ctx, reports = _ctx(tmp_path)
    assert _offer(ctx, "d1", NOW_MS)[0]
    assert not _offer(ctx, "typo", 2**62)[0]  # a typo or a test: refused, not recorded
    assert "release jump" in _last_reason(reports) and "\n" not in _last_reason(reports)
    assert ctx.storage.last_release == NOW_MS
    assert _offer(ctx, "d2", NOW_MS + 1000)[0]  # the next genuine release still goes
    assert not _offer(ctx, "d3", NOW_MS + 1000 + RELEASE_AHEAD_MS + 1 + 1000)[0]


def test_an_explicit_signed_release_jump_is_taken(tmp_path):
    ctx, _ = _ctx(tmp_path)
    assert _offer(ctx, "d1", 2**40 + NOW_MS, release_jump=True)[0]
    assert ctx.storage.last_release == 2**40 + NOW_MS


def test_a_wedged_device_is_freed_by_a_signed_release_reset(tmp_path):
    ctx, reports = _ctx(tmp_path)
    assert _offer(ctx, "d1", 2**62, release_jump=True)[0]  # wedged: every genuine release
    assert not _offer(ctx, "d2", NOW_MS)[0]                 # is now a downgrade
    assert "downgrade" in _last_reason(reports)
    assert _offer(ctx, "reset", NOW_MS, release_reset=True)[0]
    assert ctx.storage.last_release == NOW_MS
    assert _offer(ctx, "d3", NOW_MS + 1)[0]
    # the reset survives a restart (the ledger says it)
    assert Storage(tmp_path / "state").last_release == NOW_MS + 1


def test_an_unsigned_release_reset_does_nothing(tmp_path):
    ctx, _ = _ctx(tmp_path)
    assert _offer(ctx, "d1", 2**62, release_jump=True)[0]
    m = Manifest(deployment_id="reset", device_id="pi-1", release=NOW_MS, release_reset=True,
                 created_at=NOW, model=Artifact.of(b"m" * 100, 1024))
    assert isinstance(Accept(m.to_json()).run(ctx), Done)
    assert ctx.storage.last_release == 2**62
