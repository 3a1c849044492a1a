"""CPU per admitted chat call: the floodwall process's CPU time (its workers' too, from /proc) over a paced
run of /v1/chat/completions (64 connections, about 500 calls/s, an established account, the latency
policy of bench/edge.py), divided by the calls. Less noisy than added latency on a shared machine, for
A/B runs of two trees:

    PYTHONPATH=TREE/src:TREE/bench python bench/cpu_per_call.py TREE [--seconds 10]

TREE is the checkout whose floodwall and bench helpers run (this repo, or a worktree of another commit).
Prints one JSON line: CPU ms per call, calls/s, p50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (granian's workers)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0.0
    for each in [pid, *map(int, children)]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree", type=Path)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree / "bench"))
    import edge  # the tree's own bench helpers: its policy file, its settings
    from _common import account_key, process, write_lua, wrk
    from floodwall.config import SETTINGS_ENV, load
    from floodwall.server import free_port

    tmp = Path(tempfile.mkdtemp(prefix="fw-cpu-"))
    script = write_lua(tmp)
    model_port, port = free_port(), free_port()
    model_env = {SETTINGS_ENV: load(environ={}, overrides={"model": {
        "slots": 4096, "queue_size": 4096, "tokens_per_second": 100000, "reply_tokens": 8,
        "first_token_delay": 0}}).to_json()}
    policy = edge.DEFAULT_POLICY.read_text().replace("established = 200000", "established = 1000000000")
    policy = policy.replace('"120/1m burst 30"', '"1000000/1m burst 100000"')
    (tmp / "policy.toml").write_text(policy.replace("in_flight = { established = 16,",
                                                    "in_flight = { established = 100000,"))
    env = edge.settings_env(tmp, edge={"policy": str(tmp / "policy.toml")},
                            upstream={"url": f"http://127.0.0.1:{model_port}/v1"})
    model = [*edge.GRANIAN, "--factory", "--port", str(model_port), "floodwall.sim.model:app_from_env"]
    url = f"http://127.0.0.1:{port}"
    with process(model, model_env, f"http://127.0.0.1:{model_port}/health", tmp / "model.log"), \
            process(edge.floodwall_cmd(port), env, f"{url}/healthz", tmp / "floodwall.log"):
        key = account_key(url)
        pid = int(subprocess.run(["pgrep", "-f", "--", f"--port {port} "], capture_output=True,
                                 text=True).stdout.split()[0])
        chat = f"{url}/v1/chat/completions"
        wrk(chat, script, 3, 64, method="POST", key=key, delay_ms=128)  # warm-up
        before = cpu_seconds(pid)
        found = wrk(chat, script, args.seconds, 64, method="POST", key=key, delay_ms=128)
        used = cpu_seconds(pid) - before
    print(json.dumps({"cpu_ms_per_call": round(used / (found["rps"] * args.seconds) * 1000, 3),
                      "calls_per_s": found["rps"], "p50_ms": found["p50_ms"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
