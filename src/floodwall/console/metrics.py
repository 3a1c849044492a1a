"""GET /metrics: Prometheus text, for the admin token or a client on this machine.

Nothing on the request path touches prometheus_client: the gate and services count in plain dicts
(telemetry.traffic), and this collector turns them into metric families when Prometheus scrapes. Figures
are this process's; with several workers each scrape reaches one (run replicas of one worker each, or
scrape each worker's port, to see them all).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from floodwall.console.admin import require_admin
from floodwall.levels import LEVELS
from floodwall.state.memory import MemoryStore
from floodwall.web.services import Services, services

PREFIX = "floodwall"


class ServiceCollector(Collector):
    def __init__(self, config: Services, held: Callable[[], dict[str, int]] | None = None) -> None:
        self.config = config
        self.held = held

    def collect(self) -> Iterator[Metric]:
        yield from self._traffic()
        yield from self._defense()
        yield from self._model()
        yield self._held()

    def _held(self) -> Metric:
        """What each bounded in-process memory holds: each fills to its bound under a flood and stays there;
        one that kept growing past it would be a leak."""
        config = self.config
        parts = {"api_keys": len(config.accounts.keys), "sessions": len(config.accounts.sessions),
                 "campaign_signatures": len(config.prompt_guard.campaigns), "usage_rows_pending": len(config.usage),
                 **(self.held() if self.held is not None else {})}
        if isinstance(config.store, MemoryStore):
            parts["limit_buckets"] = len(config.store)
        held = GaugeMetricFamily(f"{PREFIX}_held_entries", "Entries held by this process's bounded memories "
                                 "(caches, limits, signatures)", labels=["part"])
        for part, count in sorted(parts.items()):
            held.add_metric([part], count)
        return held

    def _traffic(self) -> Iterator[Metric]:
        traffic = self.config.traffic
        requests = CounterMetricFamily(f"{PREFIX}_requests", "Requests answered, by class and outcome "
                                       "(2xx..5xx from the app, refused by the gate)", labels=["class", "outcome"])
        events = CounterMetricFamily(f"{PREFIX}_events", "Named events: sign-ins succeeded, failed and "
                                     "throttled, accounts created, model calls shed", labels=["event"])
        totals = traffic.totals
        for key, count in sorted(totals.items()):
            kind, _, rest = key.partition(":")
            if kind == "req":
                klass, _, outcome = rest.partition(":")
                requests.add_metric([klass, outcome], count)
            elif kind == "event":
                events.add_metric([rest], count)
        yield requests
        yield events
        yield CounterMetricFamily(f"{PREFIX}_arrivals", "Requests arrived at the gate", value=totals["arrivals"])
        yield CounterMetricFamily(f"{PREFIX}_new_addresses", "Client addresses not seen in the last 10 to 20 "
                                  "minutes", value=totals["new_addresses"])
        yield CounterMetricFamily(f"{PREFIX}_new_networks", "Client networks (/24, /48) not seen in the last 10 "
                                  "to 20 minutes", value=totals["new_networks"])
        yield GaugeMetricFamily(f"{PREFIX}_tracked_addresses", "Addresses remembered to tell new ones",
                                value=traffic.sources.tracked)
        talkers = GaugeMetricFamily(f"{PREFIX}_top_talker_requests", "Requests from the heaviest talkers over "
                                    "the last minute (Space-Saving: an overestimate by at most the error)",
                                    labels=["address"])
        for talker in traffic.top_talkers(10):
            talkers.add_metric([talker.key], talker.hits)
        yield talkers
        figures = self.config.guard.figures()
        yield GaugeMetricFamily(f"{PREFIX}_login_failed_ratio", "Share of checked sign-ins that failed over the "
                                "last minute", value=figures["failed_ratio"])

    def _defense(self) -> Iterator[Metric]:
        control, watch = self.config.control, self.config.watch
        level = GaugeMetricFamily(f"{PREFIX}_defense_level", "1 for the defense level in force", labels=["level"])
        for name in LEVELS:
            level.add_metric([name], 1.0 if control.level == name else 0.0)
        yield level
        yield GaugeMetricFamily(f"{PREFIX}_defense_level_pinned", "1 when an operator pinned the level",
                                value=0.0 if control.record.get("mode", "auto") == "auto" else 1.0)
        signal = GaugeMetricFamily(f"{PREFIX}_detector_signal", "The last second the detector read, every "
                                   "replica's traffic summed", labels=["signal"])
        for name, value in sorted(watch.figures.items()):
            signal.add_metric([name], value)
        yield signal
        baseline = GaugeMetricFamily(f"{PREFIX}_detector_baseline", "What calm traffic looks like, learnt",
                                     labels=["signal"])
        for name, value in sorted(watch.detector.baselines.items()):
            baseline.add_metric([name], value)
        yield baseline
        rules = GaugeMetricFamily(f"{PREFIX}_detector_rule_active", "1 while a detector rule holds",
                                  labels=["rule", "level"])
        for rule in watch.detector.policy.rules:
            rules.add_metric([rule.name, rule.level], 1.0 if rule.name in watch.detector.active else 0.0)
        yield rules
        yield GaugeMetricFamily(f"{PREFIX}_state_healthy", "1 while the shared state (Store) answers",
                                value=1.0 if control.healthy and watch.healthy else 0.0)
        scorer = self.config.prompt_guard.scorer
        if scorer is not None:
            yield GaugeMetricFamily(f"{PREFIX}_prompt_scorer_ready", "1 while the prompt scorer process takes "
                                    "prompts", value=1.0 if scorer.ready else 0.0)
            scored = CounterMetricFamily(f"{PREFIX}_prompt_scorer_prompts", "Prompts left aside, by where they "
                                         "were scored: by the scorer process, or by this worker (the process "
                                         "was starting, behind, or failed the prompt)", labels=["by"])
            scored.add_metric(["process"], scorer.answered)
            scored.add_metric(["worker"], scorer.declined)
            yield scored

    def _model(self) -> Iterator[Metric]:
        admission = self.config.admission
        for name, value in admission.gauges().items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", f"The model server's admission: {name.replace('_', ' ')}",
                                    value=value)
        shed = CounterMetricFamily(f"{PREFIX}_model_shed", "Model calls turned away with 503", labels=["tier"])
        admitted = CounterMetricFamily(f"{PREFIX}_model_admitted", "Model calls started", labels=["tier"])
        for tier, count in sorted(admission.shed.items()):
            shed.add_metric([tier], count)
        for tier, count in sorted(admission.admitted.items()):
            admitted.add_metric([tier], count)
        yield shed
        yield admitted
        latency = GaugeMetricFamily(f"{PREFIX}_model_latency_seconds", "The model server's latency (ttft: to "
                                    "the first token, tpot: per output token): recent and long-run baseline",
                                    labels=["kind", "window"])
        limiter = admission.limiter
        for kind, value in sorted(limiter.recent.items()):
            latency.add_metric([kind, "recent"], value)
        for kind, value in sorted(limiter.baseline.items()):
            latency.add_metric([kind, "baseline"], value)
        yield latency
        yield GaugeMetricFamily(f"{PREFIX}_event_loop_lag_seconds", "How late this process's event loop runs",
                                value=admission.loop_lag.lag)
        # what a leak would grow: tasks left behind by calls that ended (memory and files: process_*)
        yield GaugeMetricFamily(f"{PREFIX}_asyncio_tasks", "Tasks alive on this process's event loop",
                                value=len(asyncio.all_tasks()))


def registry(config: Services, held: Callable[[], dict[str, int]] | None = None) -> CollectorRegistry:
    found = CollectorRegistry(auto_describe=False)
    found.register(ServiceCollector(config, held))
    ProcessCollector(registry=found)  # process_resident_memory_bytes, process_open_fds, CPU seconds
    return found


async def metrics(request: Request) -> Response:
    config = services(request)
    if not _on_this_machine(request):
        await require_admin(request)
    if config.metrics is None:
        gate = getattr(request.app.state, "gate", None)
        config.metrics = registry(config, gate.held if gate is not None else None)
    return Response(generate_latest(config.metrics), media_type=CONTENT_TYPE_LATEST)


def _on_this_machine(request: Request) -> bool:
    try:
        return ipaddress.ip_address(services(request).client(request).ip).is_loopback
    except ValueError:
        return False


routes = [Route("/metrics", metrics, methods=["GET"])]
