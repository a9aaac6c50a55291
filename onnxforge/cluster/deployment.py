"""The replicas of one repository on a Ray cluster: placed, started, wired, kept in step.

The process that runs ``onnxforge serve --ray`` is the Ray driver and owns the replicas
(``cluster.replica``), each a Ray actor with unlimited restarts. :class:`Deployment`
places them round-robin over the cluster's nodes (soft affinity: a replica whose node is
gone is restarted on another), starts the first on the port asked for (0: a free one) and
the others on the port it got, and tells each where the others' control ports are.

Ray restarts a replica whose process dies, but a restarted actor is a fresh process with
nothing loaded and no peers. :meth:`Deployment.tick`, called every half second, finds it
(its probe fails while it is down; it comes back with no control port), starts it, makes
it serve the models the others serve, and gives every replica the new list of peers.
Until a replica is back, the others answer for the cluster without it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from onnxforge.cluster.autoscale import Autoscaler
from onnxforge.cluster.replica import ReplicaInfo, ReplicaServer
from onnxforge.server.app import Settings

log = logging.getLogger("onnxforge.cluster")

PROBE_SECONDS = 2.0  # a replica that does not answer its probe in this long counts as down
CALL_SECONDS = 120.0  # starting a replica may build and open large models


class DeploymentError(RuntimeError):
    """The replicas could not be placed or started (the message says which and why)."""


@dataclass
class _Replica:
    index: int
    handle: Any  # ray.actor.ActorHandle: untyped
    node_id: str  # where it was placed first
    info: ReplicaInfo | None = None  # the process that serves and is wired; None while down
    probe: Any = None  # the outstanding info() call
    probe_sent: float = 0.0
    starting: Any = None  # the outstanding start() call of a restarted or added process
    restarts: int = 0  # processes seen after the first
    joining: bool = False  # added by the autoscaler, not yet serving
    reading: tuple[int, int, int] | None = None  # its last load(): in flight, CPU, when

    @property
    def up(self) -> bool:
        return self.info is not None


@dataclass
class Deployment:
    """``replicas`` servers of ``settings.repository``, ``cpus`` Ray CPUs each."""

    settings: Settings
    replicas: int
    cpus: float = 1.0
    name: str = "replica"
    level: str = "info"  # the replicas' logging
    fmt: str = "text"
    port: int = 0  # the public port, once started
    http_port: int | None = None  # HTTP/REST's, when served
    members: list[_Replica] = field(default_factory=list)
    autoscaler: Autoscaler | None = None  # None: always ``replicas`` of them
    grace: float = 10.0  # a replica drained on scaling down has this long to finish
    leaving: list[tuple[_Replica, Any]] = field(default_factory=list)  # (replica, its stop())

    def start(self) -> int:
        """Place and start every replica, wire them; returns the public port."""
        nodes = sorted(
            live_nodes(),
            key=lambda node: (not node.get("IsHeadNode", False), node["NodeID"]),
        )
        if not nodes:
            raise DeploymentError("the Ray cluster has no live node")
        free = free_cpus()
        if free < self.replicas * self.cpus:  # else Ray would wait for CPUs, maybe forever
            raise DeploymentError(
                f"{self.replicas} replicas of {self.cpus:g} CPUs need {self.replicas * self.cpus:g}"
                f" free CPUs; the cluster has {free:g} (fewer --replicas or --replica-cpus)"
            )
        for index in range(self.replicas):
            self.members.append(self._place(index, nodes[index % len(nodes)]["NodeID"]))
        # The first replica takes the ports asked for (0: free ones); the others share them.
        first = self._call(
            self.members[0].handle.start.remote(self.settings.port, self.settings.http_port),
            "start",
        )
        self.port, self.http_port = first.port, first.http_port
        self.members[0].info = first
        started = [
            member.handle.start.remote(self.port, self.http_port) for member in self.members[1:]
        ]
        for member, ref in zip(self.members[1:], started, strict=True):
            member.info = self._call(ref, "start")
        self._wire()
        for member in self.members:
            _say(member, "")
        return self.port

    def _place(self, index: int, node_id: str) -> _Replica:
        """A new replica actor on ``node_id`` (soft: elsewhere if that node is gone)."""
        handle = (
            ray.remote(ReplicaServer)
            .options(
                name=f"{self.name}-{index}",
                max_restarts=-1,
                max_task_retries=0,  # a call in flight when it dies fails; no silent rerun
                num_cpus=self.cpus,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True),
            )
            .remote(self.settings, self.level, self.fmt)
        )
        return _Replica(index, handle, node_id)

    def models(self) -> int:
        """How many models the replicas serve (as the first live one says)."""
        models = self._serving_models(exclude=None)
        return len(models or ())

    def metrics_texts(self) -> list[str]:
        """The metrics of every serving replica that answers within the probe time."""
        calls = [member.handle.metrics_text.remote() for member in self.members if member.up]
        done, _ = ray.wait(calls, num_returns=len(calls), timeout=PROBE_SECONDS)
        texts = []
        for ref in done:
            try:
                texts.append(str(ray.get(ref)))
            except RayError:  # it died meanwhile: the next tick sees it
                continue
        return texts

    def nodes(self) -> int:
        return len({member.info.node_id for member in self.members if member.info})

    def tick(self) -> None:
        """Probe every replica; start and wire one that Ray restarted; rewire on a change."""
        changed = False
        now = time.monotonic()
        back = []
        for member in self.members:
            changed |= self._probe(member, now)
            if self._finish_start(member):
                back.append(member)
        if changed or back:
            self._wire()
        for member in back:  # said once wired: from now on a load reaches it too
            _say(member, " joined" if member.joining else f" is back (restart {member.restarts})")
            member.joining = False
        self._finish_leaving()
        if self.autoscaler is not None and self.autoscaler.enabled:
            self._autoscale(self.autoscaler, now)

    # ------------------------------------------------------------------ autoscaling

    def _autoscale(self, scaler: Autoscaler, now: float) -> None:
        """Add replicas, or drain the newest, as ``scaler`` decides from the requests in
        flight over the serving replicas."""
        up = [member for member in self.members if member.up]
        try:
            readings = ray.get([m.handle.load.remote() for m in up], timeout=PROBE_SECONDS)
        except RayError:
            return  # one went down meanwhile: the next tick sees it
        ongoing = cores = 0.0  # means since the last tick, summed over the replicas
        for member, reading in zip(up, readings, strict=True):
            last, member.reading = member.reading, reading
            # A restarted process starts its counts again: one reading to begin with.
            if last is None or reading[0] < last[0] or reading[1] < last[1]:
                continue
            if reading[2] > last[2]:
                ongoing += (reading[0] - last[0]) / (reading[2] - last[2])
                cores += (reading[1] - last[1]) / (reading[2] - last[2])
        current = len(self.members)
        wanted = scaler.decide(now, ongoing, current, cores)
        log.debug("ray: %.2f in flight, %.2f cores over %d replica(s)", ongoing, cores, current)
        if wanted == current:
            return
        log.info(
            "ray: %.1f request(s) in flight, %.2f cores used over %d replica(s): scaling %s to %d",
            ongoing,
            cores,
            current,
            "up" if wanted > current else "down",
            wanted,
        )
        for _ in range(wanted - current):
            member = self._place(max(m.index for m in self.members) + 1, self._emptiest_node())
            member.joining = True
            member.starting = member.handle.start.remote(self.port, self.http_port)
            self.members.append(member)
        if wanted < current:
            self._retire(max(self.members, key=lambda member: member.index))

    def _emptiest_node(self) -> str:
        """The live node with the fewest replicas (the head first on a tie)."""
        count: dict[str, int] = {}
        for member in self.members:
            node = member.info.node_id if member.info else member.node_id
            count[node] = count.get(node, 0) + 1
        nodes = live_nodes()
        best = min(nodes, key=lambda n: (count.get(n["NodeID"], 0), not n.get("IsHeadNode")))
        return str(best["NodeID"])

    def _retire(self, member: _Replica) -> None:
        """Out of the peers first, then drained: its requests in flight are answered, new
        ones on its connections get UNAVAILABLE (retryable) and the clients reconnect to
        the others, which share its port."""
        self.members.remove(member)
        self._wire()
        self.leaving.append((member, member.handle.stop.remote(self.grace)))
        log.info("replica %d: draining (scaled down)", member.index)

    def _finish_leaving(self) -> None:
        for member, stopping in list(self.leaving):
            done, _ = ray.wait([stopping], timeout=0)
            if done:
                self.leaving.remove((member, stopping))
                ray.kill(member.handle, no_restart=True)
                log.info("replica %d: stopped (scaled down)", member.index)

    def stop(self, grace: float) -> None:
        """Drain every replica, then end the actors (no restart)."""
        stops = [member.handle.stop.remote(grace) for member in self.members]
        stops += [stopping for _, stopping in self.leaving]
        try:
            ray.get(stops, timeout=grace + 30)
        except RayError as error:
            log.warning("a replica did not stop cleanly: %s", error)
        for member in [*self.members, *(member for member, _ in self.leaving)]:
            ray.kill(member.handle, no_restart=True)

    # ------------------------------------------------------------------ internals

    def _probe(self, member: _Replica, now: float) -> bool:
        """Whether ``member`` went down; sends it a fresh start when it came back empty."""
        if member.probe is None:
            member.probe, member.probe_sent = member.handle.info.remote(), now
            return False
        done, _ = ray.wait([member.probe], timeout=0)
        if not done:
            # No answer yet: its process is gone or restarting (or stuck, which is as bad).
            return now - member.probe_sent > PROBE_SECONDS and self._down(member, "no answer")
        probe, member.probe = member.probe, None
        try:
            info: ReplicaInfo = ray.get(probe)
        except RayError as error:
            return self._down(member, type(error).__name__)
        went_down = False
        if member.info is not None and info.pid != member.info.pid:
            went_down = self._down(member, f"now pid {info.pid}")
        if info.control is None and member.starting is None:
            # A fresh process: Ray restarted the actor, which runs __init__ only.
            member.restarts += 1
            member.starting = member.handle.start.remote(self.port, self.http_port)
        elif info.control is not None and member.info is None and member.starting is None:
            member.info = info  # it was only slow to answer: the same process, serving
            return True
        return went_down

    def _down(self, member: _Replica, why: str) -> bool:
        if member.info is None:
            return False
        log.warning(
            "replica %d (pid %d) is down (%s): the others serve; Ray restarts it",
            member.index,
            member.info.pid,
            why,
        )
        member.info = None
        return True

    def _finish_start(self, member: _Replica) -> bool:
        if member.starting is None:
            return False
        done, _ = ray.wait([member.starting], timeout=0)
        if not done:
            return False
        starting, member.starting = member.starting, None
        try:
            info: ReplicaInfo = ray.get(starting)
            models = self._serving_models(exclude=member)
            if models is not None:
                ray.get(member.handle.match.remote(models), timeout=CALL_SECONDS)
        except RayError as error:
            log.warning("replica %d: restart failed (%s); trying again", member.index, error)
            # start() is idempotent: the next round matches the models again.
            member.starting = member.handle.start.remote(self.port, self.http_port)
            return False
        member.info = info
        return True

    def _serving_models(self, exclude: _Replica | None) -> list[str] | None:
        """The models a live replica serves (None when no other replica is up)."""
        for other in self.members:
            if other is not exclude and other.up:
                try:
                    models: list[str] = ray.get(
                        other.handle.ready_models.remote(), timeout=PROBE_SECONDS
                    )
                except RayError:
                    continue
                return models
        return None

    def _wire(self) -> None:
        up = [member for member in self.members if member.info is not None]
        addresses = [member.info.control for member in up if member.info is not None]
        calls = [member.handle.connect.remote(addresses) for member in up]
        try:
            ray.get(calls, timeout=CALL_SECONDS)
        except RayError as error:  # one died meanwhile: the next tick sees it and rewires
            log.warning("wiring the replicas: %s", error)

    def _call(self, ref: Any, what: str) -> Any:
        try:
            return ray.get(ref, timeout=CALL_SECONDS)
        except GetTimeoutError:
            raise DeploymentError(
                f"a replica did not {what} within {CALL_SECONDS:g} s (not enough free CPUs "
                f"for {self.replicas} replicas of {self.cpus:g} CPUs?)"
            ) from None
        except RayError as error:  # the replica's own error, with Ray's traceback around it
            raise DeploymentError(f"a replica failed to {what}: {_last_line(error)}") from None


def replica_settings(settings: Settings, cpus: float) -> Settings:
    """Each replica's own: ONNX Runtime threads to its CPUs unless set; no metrics port (the
    driver serves every replica's metrics, added up: ``cluster.metrics``)."""
    threads = settings.threads or max(1, int(cpus))
    where = None if settings.metrics_port is None else "the Ray driver's, added up"
    return dataclasses.replace(
        settings, threads=threads, metrics_port=None, metrics_elsewhere=where
    )


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def free_cpus() -> float:
    """The CPUs no actor or task holds on the cluster now."""
    return float(ray.available_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]


def live_nodes() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [node for node in nodes if node["Alive"]]


def _say(member: _Replica, what: str) -> None:
    """``replica I[ is back (restart N)]: pid P on node N, control HOST:PORT`` (tests read it)."""
    info = member.info
    assert info is not None
    log.info(
        "replica %d%s: pid %d on node %s, control %s",
        member.index,
        what,
        info.pid,
        info.node_id[:12],
        info.control,
    )
