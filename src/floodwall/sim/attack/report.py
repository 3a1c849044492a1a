"""The simulator's report: JSON per population and for the service, a live terminal view, and a plot of
success rate and latency over time."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from floodwall.sim.attack.populations import SERVER_FAILURE
from floodwall.sim.attack.recorder import summarize

if TYPE_CHECKING:
    from rich.table import Table

    from floodwall.sim.attack.runner import Run


def build(run: Run) -> dict[str, Any]:
    recorder = run.recorder
    start, stop = run.attack_window
    established = {
        "calm": summarize(recorder.between("established", 0, start)),
        "attack": summarize(recorder.between("established", start, stop)),
        "recovery": summarize(recorder.between("established", stop, run.end + 60)),
    }
    calm_p95 = _p95(established["calm"])
    attack_p95 = _p95(established["attack"])
    populations: dict[str, dict[str, Any]] = {name: summarize(recorder.between(name, 0, run.end + 60))
                                              for name in recorder.populations()}
    attackers = [p for p in run.attackers if p.attacker]
    attack_requests = sum(_count(populations, p.name, "requests") for p in attackers)
    reached = sum(_count(populations, p.name, "reached_model") for p in attackers)
    report: dict[str, Any] = {
        "scenario": run.plan.scenario,
        "target": run.target.url,
        "addressing": ("X-Forwarded-For (the target must trust the simulator as a proxy)"
                       if run.plan.forwarded_for else "bound loopback source addresses"),
        "phases_s": {"calm": [0, start], "attack": [start, stop], "recovery": [stop, run.end]},
        "flood": {"rate_per_s": run.plan.rate, "sources": run.plan.sources},
        "corpora": run.ctx.corpora.source,
        "established": {
            **established,
            "users": run.users.users,
            "p95_ratio_attack_vs_calm": round(attack_p95 / calm_p95, 3) if calm_p95 and attack_p95 else None,
        },
        "populations": populations,
        "attackers": {
            "requests": attack_requests,
            "reached_model": reached,
            "reached_model_share": round(reached / attack_requests, 5) if attack_requests else None,
        },
        "service": {
            "levels": [(at, detail) for at, kind, detail in recorder.events if kind == "level"],
            "registration_limited_s": run.ctx.registration_limited(run.end + 60),
        },
        "simulator": dict(recorder.counters),
        "server_failures": {key.rsplit(".", 1)[0]: n for key, n in recorder.counters.items()
                            if key.endswith(f".{SERVER_FAILURE}")},
        # per second of the run, for plots: success rate, p95 latency (ms) and requests, per population
        "series": {name: recorder.series(name, math.ceil(run.end)) for name in recorder.populations()},
    }
    for population in run.attackers:
        report["attackers"].update(population.outcomes())
    return report


def _count(populations: dict[str, dict[str, Any]], name: str, field: str) -> int:
    return int(populations.get(name, {}).get(field, 0))


def _p95(summary: dict[str, Any]) -> float | None:
    latency = summary.get("latency_ms") or {}
    value = latency.get("p95")
    return float(value) if value else None


def live_table(run: Run) -> Table:
    from rich.table import Table

    now = run.recorder.now()
    table = Table(title=f"floodwall attack {run.plan.scenario}: {run.phase} at {now:5.1f}s of {run.end:.0f}s, "
                        f"defense level {run.level}")
    for column in ("population", "requests", "last 5 s", "served", "p95 ms", "reached model"):
        table.add_column(column, justify="right" if column != "population" else "left")
    for name in run.recorder.populations():
        every = run.recorder.between(name, 0, now + 1)
        recent = run.recorder.between(name, now - 5, now + 1)
        summary = summarize(recent)
        rate = summary["success_rate"]
        latency = summary["latency_ms"]
        p95 = latency.get("p95") if isinstance(latency, dict) else None
        table.add_row(name, str(len(every)), str(len(recent)),
                      "-" if rate is None else f"{float(str(rate)) * 100:.1f}%",
                      "-" if p95 is None else f"{p95:.0f}", str(sum(s.reached_model for s in every)))
    return table


def progress_line(run: Run) -> str:
    now = run.recorder.now()
    parts = []
    for name in run.recorder.populations():
        recent = run.recorder.between(name, now - 5, now + 1)
        ok = sum(s.ok for s in recent)
        parts.append(f"{name} {ok}/{len(recent)}")
    return f"[{now:5.1f}s {run.phase} level={run.level}] " + ", ".join(parts)


def plot(run: Run, path: str) -> None:
    """Success rate and p95 latency per second, per population, the attack shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = math.ceil(run.end)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for name in run.recorder.populations():
        series = run.recorder.series(name, seconds)
        xs = list(range(len(series["success_rate"])))
        style = {"linewidth": 2.4} if name == "established" else {"linewidth": 1.2, "alpha": 0.8}
        top.plot(xs, [None if v is None else v * 100 for v in series["success_rate"]], label=name, **style)
        bottom.plot(xs, series["p95_ms"], label=name, **style)
    for axis in (top, bottom):
        axis.axvspan(*run.attack_window, color="tab:red", alpha=0.08, label="_attack")
        axis.grid(alpha=0.3)
    top.set_ylabel("served (%)")
    top.set_ylim(-5, 105)
    bottom.set_ylabel("p95 latency of served calls (ms)")
    bottom.set_yscale("log")
    bottom.set_xlabel("seconds (attack shaded)")
    top.legend(loc="lower left", fontsize=8, ncol=3)
    top.set_title(f"floodwall attack {run.plan.scenario} against {run.target.url}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
