"""compose.yaml: checked by ``docker-compose config``; its NATS cluster brought up for real.

The natsflow image needs a Python base image that cannot be pulled on the CI machine,
so the services themselves are checked as configuration. The three NATS nodes run: the
services ``nats-1``..``nats-3`` of the file, with their commands, config files
(deploy/nats/) and volumes, but the scratch nats-server image (natsflow/containers.py)
and the host's network on 127.0.0.1 (the config files give each node ports of its own,
and the node names resolve to 127.0.0.1), and they must form a JetStream cluster that
holds an R3 stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
import yaml
from docker_env import require_compose, require_docker

from natsflow.containers import build_nats_image
from natsflow.embedded import find_nats_server

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
NODES = {"nats-1": (4222, 6222, 8222), "nats-2": (4223, 6223, 8223),
         "nats-3": (4224, 6224, 8224)}  # client, route, monitoring port


def taken(port: int) -> bool:
    """Something else listens on 127.0.0.1:port (a TIME_WAIT left by a test is no matter:
    nats-server binds with SO_REUSEADDR, as this does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def monitor(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET a node's monitoring endpoint: status and JSON body (0 if nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), {}
    except (OSError, ValueError):
        return 0, {}


def compose_config(compose: str) -> dict[str, Any]:
    out = subprocess.run([compose, "-f", str(COMPOSE), "config"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    config: dict[str, Any] = yaml.safe_load(out.stdout)
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config(require_compose())


def profile(config: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in config["services"].items() if name in v.get("profiles", [])}


def healthy_deps(service: dict[str, Any]) -> set[str]:
    return {name for name, dep in service.get("depends_on", {}).items()
            if dep["condition"] == "service_healthy"}


def test_the_cluster_profile_is_three_nats_nodes_and_every_service_twice_or_once(
        config: dict[str, Any]) -> None:
    services = profile(config, "cluster")
    assert sorted(services) == sorted([*NODES, "orchestrator-1", "orchestrator-2",
                                       "gateway-1", "gateway-2", "index-1", "worker-1"])
    urls = ",".join(f"nats://{n}:{client}" for n, (client, _, _) in NODES.items())
    for name, (client, _, monitoring) in NODES.items():
        node = services[name]
        assert node["command"] == ["-c", f"/etc/natsflow/nats/{name}.conf"]
        assert f"{ROOT / 'deploy' / 'nats'}:/etc/natsflow/nats:ro" in node["volumes"]
        assert any(v.startswith(f"{name}-data:/data") for v in node["volumes"])
        assert node["healthcheck"]["test"][-1] == f"http://127.0.0.1:{monitoring}/healthz"
        assert [(p["published"], p["target"]) for p in node["ports"]] == [(client, client)]
    for name, service in services.items():
        if name in NODES:
            continue
        assert service["environment"]["NATS_URL"] == urls, name
        assert healthy_deps(service) >= set(NODES), name
    for name in ("orchestrator-1", "orchestrator-2"):
        assert services[name]["command"] == ["orchestrator", "--replicas", "3"]
    assert services["index-1"]["command"] == ["index", "--replicas", "3"]
    for name, port in (("gateway-1", 8000), ("gateway-2", 8001)):
        gateway = services[name]
        assert "/readyz" in gateway["healthcheck"]["test"][-1]
        assert [p["published"] for p in gateway["ports"]] == [port]
    # The worker waits for an orchestrator's R3 declarations (through a ready gateway).
    assert "gateway-1" in healthy_deps(services["worker-1"])


def test_the_single_profile_is_one_nats_server_and_one_of_each_service(
        config: dict[str, Any]) -> None:
    services = profile(config, "single")
    assert sorted(services) == ["gateway", "index", "nats", "orchestrator", "worker"]
    assert "js-enabled-only=true" in services["nats"]["healthcheck"]["test"][-1]
    for name in ("gateway", "index", "orchestrator", "worker"):
        assert services[name]["environment"]["NATS_URL"] == "nats://nats:4222"
        assert healthy_deps(services[name]) == {"nats"}
    # Every service is in exactly one profile: `--profile single` starts no cluster node.
    assert all(len(s["profiles"]) == 1 for s in config["services"].values())


def test_the_nats_config_files_are_valid_and_name_their_node() -> None:
    for name, (client, route, monitoring) in NODES.items():
        path = ROOT / "deploy" / "nats" / f"{name}.conf"
        out = subprocess.run([find_nats_server(), "-c", str(path), "-t"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "is valid" in out.stderr + out.stdout, out
        text = path.read_text()
        for line in (f"server_name: {name}", f"port: {client}", f"http_port: {monitoring}",
                     f"port: {route}", *(f"nats://{n}:{r}" for n, (_, r, _) in NODES.items())):
            assert line in text, (name, line)


def loopback_cluster(config: dict[str, Any], image: str) -> dict[str, Any]:
    """The file's three NATS services, on the host's network and 127.0.0.1 only."""
    services = {}
    for name, (_, route, _) in NODES.items():
        node = dict(config["services"][name])
        del node["ports"], node["profiles"]  # host networking publishes nothing
        node.update(image=image, network_mode="host",
                    extra_hosts=[f"{n}:127.0.0.1" for n in NODES],
                    command=[*node["command"], "-a", "127.0.0.1",
                             "--cluster", f"nats://127.0.0.1:{route}"],
                    # The scratch image has no wget; the test polls /healthz itself.
                    healthcheck={"test": ["CMD", "/nats-server", "--version"]})
        services[name] = node
    return {"services": services, "volumes": {f"{n}-data": {} for n in NODES}}


@pytest.fixture
def compose_cluster(config: dict[str, Any], tmp_path: Path) -> Iterator[None]:
    require_docker()
    compose = require_compose()
    busy = [p for ports in NODES.values() for p in ports if taken(p)]
    if busy:
        pytest.fail(f"the compose cluster's ports {busy} are taken on 127.0.0.1")
    file = tmp_path / "compose.loopback.yaml"
    file.write_text(yaml.safe_dump(loopback_cluster(config, build_nats_image())))
    command = [compose, "-p", f"natsflow-test-{secrets.token_hex(3)}", "-f", str(file)]
    try:
        up = subprocess.run([*command, "up", "-d"], capture_output=True, text=True,
                            timeout=120)
        assert up.returncode == 0, up.stderr
        yield
    finally:
        logs = subprocess.run([*command, "logs", "--no-color"], capture_output=True,
                              text=True, timeout=60)
        subprocess.run([*command, "down", "-v"], capture_output=True, timeout=120)
        print(logs.stdout[-4000:])  # shown if the test failed


async def wait_healthy(port: int, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, body = await asyncio.to_thread(monitor, port, "/healthz")
        if status == 200:
            return
        assert loop.time() < deadline, f"/healthz on {port}: {status} {body}"
        await asyncio.sleep(0.2)


async def test_the_compose_nats_nodes_form_a_jetstream_cluster(compose_cluster: None) -> None:
    for _, _, monitoring in NODES.values():
        await wait_healthy(monitoring)
    for name, (_, _, monitoring) in NODES.items():
        _, routes = await asyncio.to_thread(monitor, monitoring, "/routez")
        assert {r["remote_name"] for r in routes["routes"]} == set(NODES) - {name}
    nc = await nats.connect([f"nats://127.0.0.1:{c}" for c, _, _ in NODES.values()])
    try:
        js = nc.jetstream()
        await js.add_stream(name="R3", subjects=["r3.>"], num_replicas=3)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            c = (await js.stream_info("R3")).cluster
            assert c is not None
            peers = {c.leader, *(r.name for r in c.replicas or [])}
            if peers == set(NODES) and all(r.current for r in c.replicas or []):
                break
            assert loop.time() < deadline, c
            await asyncio.sleep(0.2)
        while True:
            # The new stream's interest reaches the node this client is on by the routes
            # a moment later; until then a publish finds no responders.
            try:
                await js.publish("r3.x", b"x", timeout=5)
                break
            except nats.js.errors.NoStreamResponseError:
                assert loop.time() < deadline, "no stream answers a publish"
                await asyncio.sleep(0.2)
        assert (await js.stream_info("R3")).state.messages == 1
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
