"""The benchmark's results: one JSON-ready dict, the targets, and a rich table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from _load import PhaseResult
from rich.console import Console
from rich.table import Table

__all__ = ["Report", "phase_row"]

#: Targets from the issue.
TARGET_ONE_STEP_WPS = 1000.0
TARGET_CHAIN_P50_MS = 15.0
#: RSS may grow this much between the first and the last sample and still count as flat.
FLAT_RSS_TOLERANCE = 0.10


def phase_row(phase: PhaseResult, *, floor: float) -> dict[str, Any]:
    """A phase's figures, with its rates relative to the raw JetStream floor."""
    writes_per_s = phase.stored_messages / phase.elapsed if phase.elapsed else 0.0
    return {
        "name": phase.name,
        "workflows": phase.workflows,
        "steps_per_workflow": phase.steps_per_workflow,
        "completed": phase.completed,
        "failed": phase.failed,
        "elapsed_s": round(phase.elapsed, 3),
        "submit_s": round(phase.submit_elapsed, 3),
        "workflows_per_s": round(phase.workflows_per_s, 1),
        "steps_per_s": round(phase.steps_per_s, 1),
        "p50_ms": round(phase.latency_ms(50), 2),
        "p99_ms": round(phase.latency_ms(99), 2),
        "stored_msgs_per_workflow": round(phase.stored_per_workflow, 2),
        "js_writes_per_s": round(writes_per_s, 1),
        "steps_vs_floor": round(phase.steps_per_s / floor, 4) if floor else 0.0,
        "writes_vs_floor": round(writes_per_s / floor, 4) if floor else 0.0,
        "cpu_s": {k: round(v, 2) for k, v in phase.cpu.items()},
        "cpu_ms_per_workflow": {k: round(1000 * v / phase.completed, 3) if phase.completed
                                else 0.0 for k, v in phase.cpu.items()},
        # Share of one core the orchestrator used: near 100% means it is the bottleneck.
        "orchestrator_busy": round(phase.cpu.get("orchestrator", 0.0) / phase.elapsed, 3)
        if phase.elapsed else 0.0,
    }


@dataclass
class Report:
    """Everything one run measured."""

    settings: dict[str, Any]
    floor_msgs_per_s: float = 0.0
    floor_rtt_ms: float = 0.0
    phases: list[dict[str, Any]] = field(default_factory=list)
    rss_kib_before: int = 0
    rss_kib_after: int = 0
    memory_samples: list[tuple[int, int]] = field(default_factory=list)

    def targets(self) -> dict[str, Any]:
        """Each target of the issue with the measured figure and whether it was met."""
        out: dict[str, Any] = {}
        for ph in self.phases:
            if ph["steps_per_workflow"] == 1 and "load" in ph["name"]:
                out[f"{ph['name']} >= {TARGET_ONE_STEP_WPS:.0f} wf/s"] = {
                    "measured": ph["workflows_per_s"],
                    "met": ph["workflows_per_s"] >= TARGET_ONE_STEP_WPS
                    and ph["completed"] == ph["workflows"]}
            if ph["steps_per_workflow"] == 10 and "sequential" in ph["name"]:
                out[f"{ph['name']} p50 < {TARGET_CHAIN_P50_MS:.0f} ms"] = {
                    "measured": ph["p50_ms"], "met": ph["p50_ms"] < TARGET_CHAIN_P50_MS
                    and ph["completed"] == ph["workflows"]}
        if len(self.memory_samples) >= 3:
            # The first wave warms caches and buffers up; flat means no growth after it.
            first, last = self.memory_samples[1][1], self.memory_samples[-1][1]
            out["flat orchestrator RSS"] = {
                "measured": f"{first} -> {last} KiB over "
                            f"{self.memory_samples[-1][0] - self.memory_samples[1][0]} wf",
                "met": last <= first * (1 + FLAT_RSS_TOLERANCE)}
        else:
            out["flat orchestrator RSS"] = {"measured": "not run (--memory-run 100000)",
                                            "met": None}
        return out

    def as_dict(self) -> dict[str, Any]:
        """The JSON output."""
        return {
            "settings": self.settings,
            "floor": {"publish_msgs_per_s": round(self.floor_msgs_per_s, 1),
                      "publish_rtt_ms": round(self.floor_rtt_ms, 3)},
            "phases": self.phases,
            "memory": {"orchestrator_rss_kib_before": self.rss_kib_before,
                       "orchestrator_rss_kib_after": self.rss_kib_after,
                       "run": [{"finished": n, "rss_kib": kib}
                               for n, kib in self.memory_samples]},
            "targets": self.targets(),
        }

    def print(self, console: Console) -> None:
        """Draw the tables."""
        floor = Table(title="Raw JetStream floor (file stream, 64-byte messages)")
        floor.add_column("figure")
        floor.add_column("value", justify="right")
        floor.add_row("async publishes/s (publish_async, acked)",
                      f"{self.floor_msgs_per_s:,.0f}")
        floor.add_row("one synchronous publish, p50", f"{self.floor_rtt_ms:.3f} ms")
        console.print(floor)

        table = Table(title="natsflow end to end (no-op steps)")
        table.add_column("phase", no_wrap=True)
        for col in ("wf", "done", "wf/s", "steps/s", "p50 ms", "p99 ms", "steps/s ÷ floor",
                    "p50 ÷ RTT"):
            table.add_column(col, justify="right")
        for ph in self.phases:
            table.add_row(
                ph["name"], str(ph["workflows"]),
                f"{ph['completed']}" + (f" ({ph['failed']} failed)" if ph["failed"] else ""),
                f"{ph['workflows_per_s']:,.0f}", f"{ph['steps_per_s']:,.0f}",
                f"{ph['p50_ms']:.1f}", f"{ph['p99_ms']:.1f}", f"{ph['steps_vs_floor']:.3f}",
                f"{ph['p50_ms'] / self.floor_rtt_ms:.0f}x" if self.floor_rtt_ms else "-")
        console.print(table)

        cost = Table(title="Cost per workflow (JetStream messages stored, CPU time)")
        cost.add_column("phase", no_wrap=True)
        for col in ("JS msgs/wf", "JS writes/s", "÷ floor", "orch ms/wf", "orch busy",
                    "worker ms/wf", "nats ms/wf"):
            cost.add_column(col, justify="right")
        for ph in self.phases:
            per = ph["cpu_ms_per_workflow"]
            cost.add_row(
                ph["name"], f"{ph['stored_msgs_per_workflow']:.1f}",
                f"{ph['js_writes_per_s']:,.0f}", f"{ph['writes_vs_floor']:.3f}",
                f"{per.get('orchestrator', 0):.2f}", f"{ph['orchestrator_busy']:.0%}",
                f"{per.get('worker', 0):.2f}", f"{per.get('nats', 0):.2f}")
        console.print(cost)

        mem = Table(title="Orchestrator memory (VmRSS)")
        mem.add_column("when")
        mem.add_column("RSS", justify="right")
        mem.add_row("after start-up and warm-up", f"{self.rss_kib_before / 1024:.1f} MiB")
        mem.add_row("after the phases above", f"{self.rss_kib_after / 1024:.1f} MiB")
        for n, kib in self.memory_samples:
            mem.add_row(f"memory run: {n:,} finished", f"{kib / 1024:.1f} MiB")
        console.print(mem)

        targets = Table(title="Targets")
        targets.add_column("target")
        targets.add_column("measured", justify="right")
        targets.add_column("met")
        for name, t in self.targets().items():
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "NO")
            targets.add_row(name, str(t["measured"]), met)
        console.print(targets)
