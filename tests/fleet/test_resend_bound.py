"""The engine's re-send bound, without a broker: its link records what it would publish."""

from __future__ import annotations

from concurrent.futures import Future

from core.mqtt import Broker, PublishFuture
from core.protocol import Artifact, ChunkRequest, Manifest, parse_artifact_topic
from fleet.gate import checker
from fleet.link import Event, FleetLink
from fleet.orchestrator import RESERVE_ROUNDS, direct_engine
from fleet.registry import Registry

DEVICE = "dev-greedy"


class RecordingLink(FleetLink):
    """A link that never connects: publishes are recorded and acknowledged at once."""

    def __init__(self) -> None:
        super().__init__(Broker())
        self.sent: list[tuple[str, bytes, bool]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> PublishFuture:
        self.sent.append((topic, payload, retain))
        done: Future[None] = Future()
        done.set_result(None)
        return PublishFuture(len(self.sent), done)

    def chunks(self) -> int:
        return sum(1 for topic, payload, _r in self.sent
                   if payload and topic.startswith("paoding/v2/artifacts/"))


def test_a_device_gets_its_chunks_re_sent_at_most_four_times_their_count():
    data = bytes(range(256)) * 40  # 10 KiB in 5 chunks
    art = Artifact.of(data, 2048)
    manifest = Manifest(deployment_id="dep-1", device_id=DEVICE, model=art)
    link = RecordingLink()
    with Registry(":memory:") as reg:
        engine = direct_engine(manifest, {art.sha256: data}, reg, link, timeout=60,
                               check=checker(None))
        engine.server.min_interval_s = 0.0  # no rate limit: only the device's budget bounds it
        engine.start_wave(0)
        first = link.chunks()
        assert first == art.chunks  # published once, retained
        need = ChunkRequest(device_id=DEVICE, deployment_id="dep-1", artifact=art.sha256,
                            ranges=[(0, art.chunks)], have=0)
        for _ in range(3 * RESERVE_ROUNDS):  # a device asking for everything, without end
            engine.handle(Event("need", DEVICE, need.to_json()))
        assert link.chunks() - first == RESERVE_ROUNDS * art.chunks
        assert engine.server.stats.refused_requests == 2 * RESERVE_ROUNDS
        assert {parse_artifact_topic(t)[0] for t, p, _r in link.sent if p and "artifacts" in t
                } == {art.sha256}
        other = need.model_copy(update={"device_id": "dev-other"})  # not its deployment
        engine.handle(Event("need", "dev-other", other.to_json()))
        assert link.chunks() - first == RESERVE_ROUNDS * art.chunks and engine.dropped == 1
