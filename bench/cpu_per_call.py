"""CPU per admitted chat call: the floodwall process's CPU time (its workers' and its prompt scorer's too, from
/proc) over a paced run of /v1/chat/completions (64 connections, about 500 calls/s or --rate, an established
account, the latency policy of bench/edge.py), divided by the calls; the prompt scorer process's share; and
the event loop's (the worker's busiest thread: granian's I/O runs in threads of its own). Less noisy than
added latency on a shared machine, for A/B runs of two trees:

    PYTHONPATH=TREE/src:TREE/bench python bench/cpu_per_call.py TREE [--seconds 10] [--relay] [--rounds 1]
                                                             [--rate 500] [--inline-scoring] [--level L]

TREE is the checkout whose floodwall and bench helpers run (this repo, or a worktree of another commit).
--relay also measures bench/bare_relay.py on the same model server, interleaved: what the hop alone costs
the event loop. --inline-scoring: prompts scored by the worker itself (screening.process off). Prints a JSON
line a run: CPU ms per call, the event loop's, calls/s, p50 and p99 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def loop_seconds(pid: int) -> float:
    """CPU time of the busiest thread of a server's worker process (its event loop's)."""
    worker = int(subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()[0])
    times = []
    for thread in os.listdir(f"/proc/{worker}/task"):
        fields = Path(f"/proc/{worker}/task/{thread}/stat").read_text().rsplit(")", 1)[1].split()
        times.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return max(times)


def server_pid(port: int) -> int:
    found = subprocess.run(["pgrep", "-f", "--", f"--port {port} "], capture_output=True, text=True)
    return int(found.stdout.split()[0])


def cpu_seconds(pid: int, depth: int = 0) -> float:
    """CPU time of a process and its descendants (granian's workers, floodwall's prompt scorer); with `depth`,
    of the descendants that many generations down only (2: the workers' children, the scorer)."""
    total, todo = 0.0, [pid]
    for _ in range(depth):
        todo = [int(c) for each in todo
                for c in subprocess.run(["pgrep", "-P", str(each)], capture_output=True, text=True).stdout.split()]
    while todo:
        each = todo.pop()
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        todo += map(int, subprocess.run(["pgrep", "-P", str(each)], capture_output=True, text=True).stdout.split())
    return total


def prose(chars: int) -> str:
    """Ordinary text of `chars` characters: a long question with its context, nothing screening flags."""
    sentence = ("The quarterly report shows that revenue grew in every region, while costs in logistics rose "
                "faster than planned; please summarise the main drivers and suggest three questions for the team. ")
    return (sentence * (chars // len(sentence) + 1))[:chars]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree", type=Path)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--relay", action="store_true", help="also the bare relay, interleaved")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rate", type=int, default=500, help="calls/s offered over the 64 connections")
    parser.add_argument("--inline-scoring", action="store_true",
                        help="prompts scored in the worker (screening.process off), not by the scorer process")
    parser.add_argument("--level", default="normal", help="the defense level in force (under_attack: prompts refused "
                        "where they flag, so each call waits for its prompt's verdict)")
    parser.add_argument("--prompt-chars", type=int, default=0,
                        help="a prompt of this many characters (ordinary prose) instead of the short greeting")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree / "bench"))
    import edge  # the tree's own bench helpers: its policy file, its settings
    from _common import ADMIN_TOKEN, CHAT, account_key, pin_level, process, write_lua, wrk
    from floodwall.config import SETTINGS_ENV, load
    from floodwall.server import free_port

    tmp = Path(tempfile.mkdtemp(prefix="fw-cpu-"))
    script = write_lua(tmp)
    model_port, port, relay_port = free_port(), free_port(), free_port()
    model_env = {SETTINGS_ENV: load(environ={}, overrides={"model": {
        "slots": 4096, "queue_size": 4096, "tokens_per_second": 100000, "reply_tokens": 8,
        "first_token_delay": 0}}).to_json()}
    policy = edge.DEFAULT_POLICY.read_text().replace("established = 200000", "established = 1000000000")
    policy = policy.replace('"120/1m burst 30"', '"1000000/1m burst 100000"')
    (tmp / "policy.toml").write_text(policy.replace("in_flight = { established = 16,",
                                                    "in_flight = { established = 100000,"))
    upstream = f"http://127.0.0.1:{model_port}/v1"
    env = edge.settings_env(tmp, edge={"policy": str(tmp / "policy.toml")}, upstream={"url": upstream},
                            admin={"token": ADMIN_TOKEN},
                            **({"screening": {"process": False}} if args.inline_scoring else {}))
    model = [*edge.GRANIAN, "--factory", "--port", str(model_port), "floodwall.sim.model:app_from_env"]
    relay = [*edge.GRANIAN, "--port", str(relay_port), "bare_relay:app"]
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as servers:
        servers.enter_context(process(model, model_env, f"http://127.0.0.1:{model_port}/health", tmp / "model.log"))
        servers.enter_context(process(edge.floodwall_cmd(port), env, f"{url}/healthz", tmp / "floodwall.log"))
        targets = [("floodwall", port, account_key(url))]
        if args.level != "normal":  # (after the key is made: registration may close at a higher level)
            pin_level(url, args.level, "bench/cpu_per_call.py")
        if args.relay:
            servers.enter_context(process(relay, {"PYTHONPATH": str(args.tree / "bench"), "BENCH_UPSTREAM": upstream},
                                          f"http://127.0.0.1:{relay_port}/health", tmp / "relay.log", expect=404))
            targets.append(("relay", relay_port, ""))
        body = CHAT if not args.prompt_chars else json.dumps({
            "model": "floodwall-simulated-chat", "max_tokens": 8,
            "messages": [{"role": "user", "content": prose(args.prompt_chars)}]})
        for _ in range(args.rounds):
            for name, where, key in targets:
                pid = server_pid(where)
                chat = f"http://127.0.0.1:{where}/v1/chat/completions"
                pause = max(1, round(64 * 1000 / args.rate))
                wrk(chat, script, 3, 64, method="POST", key=key, delay_ms=pause, body=body)  # warm-up
                before, loop_before, aside_before = cpu_seconds(pid), loop_seconds(pid), cpu_seconds(pid, 2)
                found = wrk(chat, script, args.seconds, 64, method="POST", key=key, delay_ms=pause, body=body)
                used, loop_used = cpu_seconds(pid) - before, loop_seconds(pid) - loop_before
                aside_used = cpu_seconds(pid, 2) - aside_before
                calls = found["rps"] * args.seconds
                print(json.dumps({"server": name, "cpu_ms_per_call": round(used / calls * 1000, 3),
                                  "loop_ms_per_call": round(loop_used / calls * 1000, 3),
                                  "scorer_ms_per_call": round(aside_used / calls * 1000, 3),
                                  "calls_per_s": found["rps"], "p50_ms": found["p50_ms"],
                                  "p99_ms": found.get("p99_ms"), "non_2xx": found["non_2xx"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
