"""`floodwall attack`: run one scenario against a loopback target, with a live view, a JSON report and a
plot."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import sys
from typing import Any

from floodwall.sim.attack.plan import SCENARIOS, Plan, admin_token, read_keys, started_at

# the simulator's own dependencies (the `attack` extra), imported only when it runs
EXTRA = ("httpx", "openai", "rich")
INSTALL_HINT = "pip install 'floodwall[attack]'"


def add_parser(commands: Any) -> None:
    attack = commands.add_parser(
        "attack", help=f"simulate an attack against a loopback floodwall, with users (needs {INSTALL_HINT})",
        description=f"Simulate an attack against a loopback floodwall while established users chat. Needs the "
                    f"attack extra: {INSTALL_HINT}.")
    attack.add_argument("scenario", choices=list(SCENARIOS))
    attack.add_argument("--target", required=True, help="the service's URL, e.g. http://127.0.0.1:8080")
    attack.add_argument("--duration", type=float, default=30.0, help="seconds of attack (default 30)")
    attack.add_argument("--calm", type=float, default=10.0, help="seconds of users alone before it (default 10)")
    attack.add_argument("--recovery", type=float, default=15.0, help="seconds of users after it (default 15)")
    attack.add_argument("--sources", type=int, default=5000, help="distinct flood source addresses (default 5000)")
    attack.add_argument("--rate", type=float, default=1000.0, help="flood requests per second (default 1000)")
    attack.add_argument("--users", type=int, default=8, help="established users, made at start (default 8)")
    attack.add_argument("--keys", help="file of established users' API keys, one a line (accounts made earlier)")
    attack.add_argument("--admin-token", help="to follow the defense level (default: FLOODWALL_ADMIN_TOKEN)")
    attack.add_argument("--forwarded-for", action="store_true",
                        help="send X-Forwarded-For instead of binding source addresses (the target must trust "
                             "the simulator as a proxy)")
    attack.add_argument("--corpora", help="folder of public attack corpora (payloads, prompts, domains, passwords)")
    attack.add_argument("--model", default="floodwall-simulated-chat", help="model name to ask for")
    attack.add_argument("--report", help="write the JSON report here")
    attack.add_argument("--plot", help="write a PNG of success rate and latency over time here")
    attack.add_argument("--quiet", action="store_true", help="no live view; the summary only")
    attack.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    missing = _missing([*EXTRA, *(("matplotlib",) if args.plot else ())])
    if missing:
        print(f"floodwall attack needs {', '.join(missing)}: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from floodwall.sim.attack.traffic import TargetError

    try:
        keys = read_keys(args.keys)
        # a report that cannot be written fails now, not after the run
        report_file = open(args.report, "w", encoding="utf-8") if args.report else None  # noqa: SIM115
    except OSError as exc:
        print(f"floodwall attack: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    plan = Plan(args.scenario, args.target, duration=args.duration, calm=args.calm, recovery=args.recovery,
                sources=args.sources, rate=args.rate, users=args.users, keys=keys,
                admin_token=admin_token(args.admin_token), forwarded_for=args.forwarded_for,
                corpora=args.corpora, model=args.model)
    with report_file or contextlib.nullcontext():
        try:
            report = asyncio.run(_run(plan, live=not args.quiet and sys.stdout.isatty(), progress=not args.quiet,
                                      plot=args.plot))
        except (TargetError, ValueError, OSError) as exc:
            print(f"floodwall attack: {exc}", file=sys.stderr)
            return 2
        if report_file is not None:
            json.dump(report, report_file, indent=2)
    print(summary(report))
    return 0


def _missing(modules: list[str]) -> list[str]:
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


async def _run(plan: Plan, *, live: bool, progress: bool, plot: str | None) -> dict[str, Any]:
    from rich.console import Console
    from rich.live import Live

    from floodwall.sim.attack import report as reporting
    from floodwall.sim.attack.runner import Run

    if live:
        console = Console()
        with Live(console=console, refresh_per_second=2, transient=False) as view:
            run = Run(plan, on_tick=lambda r: view.update(reporting.live_table(r)))
            result = await run.execute()
    else:
        ticks = [0]

        def line(r: Run) -> None:
            ticks[0] += 1
            if progress and ticks[0] % 5 == 0:
                print(reporting.progress_line(r), file=sys.stderr, flush=True)

        run = Run(plan, on_tick=line)
        result = await run.execute()
    result["started_at"] = started_at()
    if plot:
        reporting.plot(run, plot)
    return result


def summary(report: dict[str, Any]) -> str:
    established = report["established"]
    lines = [f"scenario {report['scenario']} against {report['target']} ({report['addressing']})"]
    for phase in ("calm", "attack", "recovery"):
        s = established[phase]
        lines.append(f"  established users, {phase:8s}: {s['requests']} calls, served {_pct(s['success_rate'])}, "
                     f"p95 {s['latency_ms']['p95']} ms")
    lines.append(f"  p95 during the attack / calm: {established['p95_ratio_attack_vs_calm']}")
    for name, s in report["populations"].items():
        if name != "established":
            lines.append(f"  {name}: {s['requests']} requests, {_pct(s['success_rate'])} answered 2xx, "
                         f"{s['reached_model']} reached the model")
    attackers = {k: v for k, v in report["attackers"].items() if k not in ("requests",)}
    lines.append("  attackers: " + ", ".join(f"{k} {v}" for k, v in attackers.items()))
    counters = report["simulator"]
    no_answer = sum(v for k, v in counters.items() if ".no_answer." in k)
    not_sent = sum(v for k, v in counters.items() if k.endswith(".not_sent"))
    lines.append(f"  no HTTP answer (refused, reset or timed out): {no_answer}; held back by the simulator's own "
                 f"bound on requests in flight: {not_sent}")
    failures = report["server_failures"]
    lines.append("  answers that failed (a 500, or a 5xx without a reason): "
                 + (", ".join(f"{name} {n}" for name, n in sorted(failures.items())) or "none"))
    levels = ", ".join(f"{at:.0f}s {level}" for at, level in report["service"]["levels"]) or "not followed"
    lines.append(f"  defense level: {levels}")
    windows = report["service"]["registration_limited_s"]
    limited = ", ".join(f"from {start}s to {end}s" for start, end in windows) or "never"
    lines.append(f"  registration limited (most attempts refused as busy): {limited}")
    return "\n".join(lines)


def _pct(value: object) -> str:
    return "-" if value is None else f"{float(str(value)) * 100:.2f}%"
