"""The durable mode of the benchmark: the same phases on a server that fsyncs every write.

``sync_interval: always`` makes nats-server flush every acknowledged write to disk before
it acknowledges it (what a single-server deployment that must survive a power cut
needs); its default acknowledges from the page cache and flushes every two minutes.
:class:`SyncComparison` holds the reports of both modes, takes the median of each figure
over the rounds, and gives the durable mode's ratios to the default with the targets of
issue 17.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from _report import Report
from rich.console import Console
from rich.table import Table

__all__ = ["SYNC_CONFIG", "SyncComparison"]

#: nats-server configuration appended for each mode (natsflow.embedded.EmbeddedNats).
SYNC_CONFIG: dict[str, str] = {
    "default": "",
    "always": "jetstream {\n  sync_interval: always\n}\n",
}

#: Issue 17's targets: durable one-step throughput at least this share of the default's,
#: durable 10-step sequential p50 at most this multiple of the default's.
TARGET_THROUGHPUT_RATIO = 0.5
TARGET_CHAIN_P50_RATIO = 1.3


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


@dataclass
class SyncComparison:
    """The reports of both storage modes, by mode, in the order they ran."""

    modes: tuple[str, str]
    reports: dict[str, list[Report]] = field(default_factory=dict)

    def add(self, mode: str, report: Report) -> None:
        """One round's report of ``mode``."""
        self.reports.setdefault(mode, []).append(report)

    def complete(self) -> bool:
        """Every phase of every report finished every workflow."""
        return all(ph["completed"] == ph["workflows"]
                   for reports in self.reports.values() for r in reports for ph in r.phases)

    def _figure(self, mode: str, phase: str, key: str) -> float:
        return _median([ph[key] for r in self.reports.get(mode, [])
                        for ph in r.phases if ph["name"] == phase])

    def phases(self) -> list[dict[str, Any]]:
        """Each phase's medians in both modes and the durable mode's ratios."""
        base, durable = self.modes
        names = [ph["name"] for ph in self.reports[base][0].phases] if base in self.reports \
            else []
        rows = []
        for name in names:
            row: dict[str, Any] = {"name": name}
            for key in ("workflows_per_s", "p50_ms", "p99_ms", "stored_msgs_per_workflow"):
                a, b = self._figure(base, name, key), self._figure(durable, name, key)
                row[key] = {base: a, durable: b, "ratio": round(b / a, 3) if a else 0.0}
            rows.append(row)
        return rows

    def floors(self) -> dict[str, dict[str, float]]:
        """The raw floor and one publish's round trip, median per mode."""
        return {mode: {"publish_msgs_per_s": _median([r.floor_msgs_per_s for r in reports]),
                       "publish_rtt_ms": _median([r.floor_rtt_ms for r in reports])}
                for mode, reports in self.reports.items()}

    def targets(self) -> dict[str, Any]:
        """Issue 17's durable-mode targets, measured as ratios in this run."""
        out: dict[str, Any] = {}
        for row in self.phases():
            if row["name"].startswith("1-step load"):
                ratio = row["workflows_per_s"]["ratio"]
                out[f"{row['name']} wf/s durable / default >= {TARGET_THROUGHPUT_RATIO}"] = {
                    "measured": ratio, "met": ratio >= TARGET_THROUGHPUT_RATIO}
            if row["name"].startswith("10-step sequential"):
                ratio = row["p50_ms"]["ratio"]
                out[f"{row['name']} p50 durable / default <= {TARGET_CHAIN_P50_RATIO}"] = {
                    "measured": ratio, "met": ratio <= TARGET_CHAIN_P50_RATIO}
        return out

    def as_dict(self) -> dict[str, Any]:
        """The JSON output: medians, ratios, targets, and every round's full report."""
        return {
            "modes": list(self.modes),
            "rounds": {mode: len(reports) for mode, reports in self.reports.items()},
            "floor": self.floors(),
            "phases": self.phases(),
            "targets": self.targets(),
            "reports": {mode: [r.as_dict() for r in reports]
                        for mode, reports in self.reports.items()},
        }

    def print(self, console: Console) -> None:
        """Draw the comparison (each mode's own tables first)."""
        for mode, reports in self.reports.items():
            for i, report in enumerate(reports):
                console.rule(f"sync_interval {mode}, round {i + 1}")
                report.print(console)
        base, durable = self.modes
        console.rule(f"sync_interval {durable} against {base} "
                     f"(medians of {len(self.reports.get(base, []))} rounds)")
        floors = self.floors()
        floor = Table(title="Raw JetStream floor")
        floor.add_column("figure")
        for col in (base, durable, "ratio"):
            floor.add_column(col, justify="right")
        for key, label in (("publish_msgs_per_s", "async publishes/s"),
                           ("publish_rtt_ms", "one synchronous publish, p50 ms")):
            a, b = floors[base][key], floors[durable][key]
            floor.add_row(label, f"{a:,.3f}" if a < 100 else f"{a:,.0f}",
                          f"{b:,.3f}" if b < 100 else f"{b:,.0f}", f"{b / a:.2f}" if a else "-")
        console.print(floor)
        table = Table(title=f"natsflow end to end: {durable} / {base}")
        table.add_column("phase", no_wrap=True)
        for col in (f"wf/s {base}", f"wf/s {durable}", "ratio", f"p50 {base}",
                    f"p50 {durable}", "ratio", "JS msgs/wf"):
            table.add_column(col, justify="right")
        for row in self.phases():
            wps, p50 = row["workflows_per_s"], row["p50_ms"]
            table.add_row(row["name"], f"{wps[base]:,.0f}", f"{wps[durable]:,.0f}",
                          f"{wps['ratio']:.2f}", f"{p50[base]:.1f}", f"{p50[durable]:.1f}",
                          f"{p50['ratio']:.2f}",
                          f"{row['stored_msgs_per_workflow'][base]:.1f}")
        console.print(table)
        targets = Table(title="Durable-mode targets (issue 17)")
        targets.add_column("target")
        targets.add_column("measured", justify="right")
        targets.add_column("met")
        for name, t in self.targets().items():
            targets.add_row(name, f"{t['measured']:.2f}", "yes" if t["met"] else "NO")
        console.print(targets)
