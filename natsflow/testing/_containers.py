"""NATS in containers for the test environment (``--natsflow-nats container``).

Two :class:`~natsflow.testing.NatsProvider` kinds on :mod:`natsflow.containers`
(testcontainers, the extra ``natsflow[containers]``, and a running Docker engine): one
server, or a 3-node JetStream cluster, each on the host's network and loopback ports.
"""

from __future__ import annotations

from natsflow.containers import NatsContainer, NatsContainerCluster

__all__ = ["ContainerClusterNats", "ContainerNats"]


class ContainerNats:
    """One nats-server with JetStream in a container (``--natsflow-nats container``)."""

    def __init__(self) -> None:
        self.container: NatsContainer | None = None

    def start(self) -> list[str]:
        self.container = NatsContainer(name="natsflow-test").start()
        return [self.container.url]

    def stop(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


class ContainerClusterNats:
    """A 3-node JetStream cluster in containers (``--natsflow-nats container-cluster``)."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.cluster: NatsContainerCluster | None = None

    def start(self) -> list[str]:
        self.cluster = NatsContainerCluster(self.size).start()
        return self.cluster.urls

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
