"""Fleet fixtures: simulated fleets on a real broker, a NATS cluster (the registry's
PostgreSQL fixtures are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory):
    """Three NATS nodes (JetStream, MQTT interface) routed to each other on loopback."""
    from natscluster import NatsCluster

    cluster = NatsCluster(tmp_path_factory.mktemp("nats")).start()
    yield cluster
    cluster.stop()
