"""The artifact server's bounds, without a broker (publishes are recorded)."""

from __future__ import annotations

from core.protocol import Artifact, ChunkRequest
from fleet.artifacts import ArtifactServer


def test_a_request_is_served_within_its_budget_and_the_rate():
    sent: list[tuple[str, int]] = []
    server = ArtifactServer(lambda topic, payload, retain=False: sent.append((topic, len(payload))),
                            min_interval_s=0.0)
    data = bytes(range(256)) * 64  # 16 KiB in 4 chunks
    art = Artifact.of(data, 4096)
    server.add(data, art)
    req = ChunkRequest(device_id="d", deployment_id="x", artifact=art.sha256, ranges=[(0, 4)],
                       have=0)
    assert server.request(req, budget=3) == 3  # a device's budget caps what it gets...
    assert server.stats.refused_requests == 1  # ...and the rest is refused, counted
    assert server.request(req, budget=0) == 0 and server.stats.refused_requests == 2
    assert server.request(req) == 4
    assert len(sent) == 7 and all(n == 4096 for _t, n in sent)
    other = req.model_copy(update={"artifact": "ab" * 32})
    assert server.request(other) == 0  # not an artifact it serves
    server.clear(art.sha256)
    assert sent[-4:] == [(f"paoding/v2/artifacts/{art.sha256}/{i}", 0) for i in range(4)]
