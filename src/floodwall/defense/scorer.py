"""The prompt rules and the classifier in a process of their own (`python -m floodwall.defense.scorer`): a
prompt's scoring costs the event loop a pipe write and a read (some 30-50 µs: the write wakes the process)
instead of the 0.1-1 ms of CPU the scoring takes, and that CPU is another core's. A filter, not the service:
while the process starts or restarts, past MAX_PENDING prompts unanswered, or when it fails a prompt, the
caller scores it itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import pickle
import signal
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, NamedTuple

from floodwall import logs
from floodwall.defense.prompts import Screen, Verdict, bounded, plain
from floodwall.defense.turns import Turns

log = logging.getLogger("floodwall.defense")
_FRAME = struct.Struct("<I")  # a frame's length, then a pickle: both ends are floodwall's own
_READY = "ready"
# the classifier and the rules' time for a prompt, per character, this machine warm (0.05 ms for 20, 0.26 for
# 1,000, 2.9 for 16,000): what the prompts sent and not yet answered are still to cost the process
SECONDS_PER_CHARACTER = 0.2e-6
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Scores(NamedTuple):
    verdict: Verdict  # the rules'
    probability: float  # the classifier's; 0 when it was not asked


Reply = Callable[[Scores | None], None]  # None: the process could not score it; the caller does


class Scorer:
    """The client side: `submit` a prompt, its scores come to `reply` on the event loop. The process is
    started with the service (`start`) and again, after RESTART seconds (doubling while it keeps failing),
    whenever it exits."""

    MAX_PENDING = 256  # prompts submitted and not answered: beyond, the process is behind, and the caller scores
    MAX_WAITING = 1 << 20  # characters of them (bounded() each)
    # prompts written to the process and not answered, at most, and their characters (some 6 ms of its work):
    # the others wait in the worker (Turns), where the order they go in can still be chosen. Enough that the
    # process is not left idle while the worker's loop is busy and reads its answers late (an adversarial
    # review: two at a time, behind a loop busy 1 ms a turn, 250 short prompts took 379 ms where all at once
    # took 15; at 64 and 32 Ki characters, 15)
    IN_FLIGHT = 64
    WRITTEN = 32768
    MAX_FRAME = 1 << 20  # bytes of an answer: a longer one is not our process speaking
    RESTART = (1.0, 30.0)  # seconds before a start again: the first, the most
    # seconds the oldest prompt may wait for its answer before the process is ended and started again: long,
    # since on idle CPU it may only be starved by a busy machine (the worker scores meanwhile)
    HUNG = 120.0

    def __init__(self, command: Sequence[str] | None = None) -> None:
        self.command = list(command or (sys.executable, "-m", "floodwall.defense.scorer"))
        self._transport: asyncio.SubprocessTransport | None = None
        self._pipe: asyncio.WriteTransport | None = None
        self._ready = False
        # by prompt written to the process: its reply, when it was written, its length in characters
        self._pending: dict[int, tuple[Reply, float, int]] = {}
        self._turns: Turns[tuple[int, str, bool, Reply]] = Turns()  # those submitted, not yet written
        self._queued = 0  # characters written and not answered
        self._next = 0
        self._stopping = False
        self._restart: asyncio.TimerHandle | None = None
        self._spawning: asyncio.Task[None] | None = None
        self._generation = 0  # of the process: what an earlier one says, or its exit, is no longer news
        self._backoff = self.RESTART[0]
        self._started_at = 0.0
        self.answered = 0  # prompts the process scored
        self.declined = 0  # prompts it was not asked to score (not ready, behind) or failed: scored by the caller

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def pid(self) -> int | None:
        return self._transport.get_pid() if self._transport is not None else None

    async def start(self) -> None:
        """Start the process; this does not wait for it to be ready (prompts are scored by the caller until)."""
        self._stopping = False
        if self._transport is None:
            await self._spawn()

    async def _spawn(self) -> None:
        self._restart = None
        self._started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self._generation += 1
        generation = self._generation
        try:
            # one thread: numpy's BLAS would start threads of its own, at normal priority
            transport, _ = await loop.subprocess_exec(
                lambda: _Protocol(self, generation), *self.command, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=None, env={**os.environ, **_ONE_THREAD})
        except Exception as exc:  # a filter, not the service: the worker scores prompts while this is down
            logs.event(log, "scorer_start_failed", logging.ERROR, error=repr(exc))
            if isinstance(exc, NotImplementedError):  # an event loop without subprocesses: it never will
                self._stopping = True
            self._exited()
            return
        self._transport = transport
        self._pipe = transport.get_pipe_transport(0)  # type: ignore[assignment]

    def behind(self, most: float) -> bool:
        """Whether a prompt a call waits for, sent now, would wait more than `most` seconds for its answer: the
        oldest written has waited that long already (on idle CPU, the process waits while the machine is
        busy), or the prompts before it (those written, and those its calls wait for) are that much work
        (SECONDS_PER_CHARACTER). The other prompts waiting go after it."""
        pending = self._pending
        return bool(pending) and ((self._queued + self._turns.urgent_characters) * SECONDS_PER_CHARACTER > most or
                                  time.monotonic() - next(iter(pending.values()))[1] > most)

    def submit(self, text: str, with_model: bool, reply: Reply, account: object = None,
               urgent: bool = False) -> bool:
        """Send a prompt to be scored (the part the rules and classifier read); False when the process cannot
        take it now: the caller scores it. `urgent`: a call waits for its answer (it goes first); `account`:
        whose prompt it is (the others go by turns between accounts: Turns)."""
        pipe, pending, turns = self._pipe, self._pending, self._turns
        now = time.monotonic()
        if pending and now - next(iter(pending.values()))[1] > self.HUNG:
            logs.event(log, "scorer_hung", logging.WARNING, pending=len(pending))
            self._broken()
        text = bounded(text)
        if (not self._ready or pipe is None or pipe.is_closing() or len(pending) + len(turns) >= self.MAX_PENDING
                or turns.characters + len(text) > self.MAX_WAITING):
            self.declined += 1
            return False
        self._next += 1
        if not turns and self._room():  # nothing waits: written now, no turns to take
            pipe.write(self._written(self._next, text, with_model, reply, now))
            return True
        turns.put((self._next, text, with_model, reply), len(text), account, urgent)
        self._write()
        return True

    def _room(self) -> bool:
        """Whether the process may be written another prompt: fewer than IN_FLIGHT unanswered, under WRITTEN
        characters (any one prompt, where none is)."""
        pending = self._pending
        return not pending or (len(pending) < self.IN_FLIGHT and self._queued < self.WRITTEN)

    def _write(self) -> None:
        """Write the next prompts in their turns while the process has room for them (one write)."""
        pipe, turns = self._pipe, self._turns
        if pipe is None or pipe.is_closing() or not turns:
            return  # (what waits is answered None once the process is seen gone: _exited)
        frames = []
        now = time.monotonic()
        while self._room():
            found = turns.take()
            if found is None:
                break
            frames.append(self._written(*found, now))
        if frames:
            pipe.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _written(self, ident: int, text: str, with_model: bool, reply: Reply, now: float) -> bytes:
        """The prompt's frame, counted as written (unanswered) from `now`."""
        self._pending[ident] = (reply, now, len(text))
        self._queued += len(text)
        return _frame((ident, text, with_model))

    def _answer(self, message: Any) -> None:
        if message == _READY:
            self._ready = True
            return
        ident, verdict, probability = message
        reply, _, size = self._pending.pop(ident, (None, 0.0, 0))
        if reply is None:
            return
        self._queued -= size
        self._write()  # the next before this one's reply runs: the process is not left idle meanwhile
        if verdict is None:
            self.declined += 1
            reply(None)
        else:
            self.answered += 1
            reply(Scores(Verdict(*verdict), probability))

    def _broken(self) -> None:
        self._ready = False
        if self._transport is not None:
            self._transport.kill()  # its exit (process_exited) fails what is pending and starts it again

    def _exited(self, generation: int | None = None) -> None:
        """The process is gone: what it had not answered is scored by the callers, and it starts again."""
        if generation is not None and generation != self._generation:
            return  # an earlier process's end, after a stop and a start
        self._ready = False
        self._pipe = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        pending, self._pending, self._queued = self._pending, {}, 0
        replies = [reply for reply, _, _ in pending.values()]
        replies += [reply for _, _, _, reply in self._turns.clear()]
        for reply in replies:
            self.declined += 1
            reply(None)
        if self._stopping or self._restart is not None:
            return
        # a process that keeps failing soon after its start is started less and less often
        lived = time.monotonic() - self._started_at
        self._backoff = self.RESTART[0] if lived > 60 else min(self._backoff * 2, self.RESTART[1])
        logs.event(log, "scorer_exited", logging.WARNING, restart_in=self._backoff)
        loop = asyncio.get_running_loop()
        self._restart = loop.call_later(self._backoff, self._respawn)

    def _respawn(self) -> None:
        self._spawning = asyncio.get_running_loop().create_task(self._spawn(), name="scorer-start")

    async def stop(self) -> None:
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        if self._spawning is not None:
            await self._spawning
        transport = self._transport
        if transport is None:
            return
        if self._pipe is not None:
            self._pipe.close()
        # it holds nothing to keep, and on idle CPU a busy machine may not let it see its input end, or end at
        # all: back at normal priority (where the system allows it: root, or CAP_SYS_NICE), then killed
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(transport.get_pid(), os.SCHED_OTHER, os.sched_param(0))
        with contextlib.suppress(ProcessLookupError):
            transport.kill()
        for _ in range(20):  # (a process on idle CPU may take a while to end on a busy machine: not waited for)
            if transport.get_returncode() is not None:
                break
            await asyncio.sleep(0.01)
        self._exited()
        self._generation += 1  # its end, if it comes later, is not taken for a new process's


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self, scorer: Scorer, generation: int) -> None:
        self.scorer = scorer
        self.generation = generation
        self.buffer = bytearray()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        if self.generation != self.scorer._generation:
            return
        buffer = self.buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _FRAME.size:
            (size,) = _FRAME.unpack_from(buffer, start)
            end = start + _FRAME.size + size
            if len(buffer) < end and size <= Scorer.MAX_FRAME:
                break
            try:
                if size > Scorer.MAX_FRAME:
                    raise ValueError(f"an answer of {size} bytes")
                self.scorer._answer(pickle.loads(buffer[start + _FRAME.size:end]))
            except Exception:  # not our process's answer: it is ended, and started again
                log.exception("the prompt scorer process answered what it cannot have meant; restarting it")
                buffer.clear()
                self.scorer._broken()
                return
            start = end
        del buffer[:start]

    def process_exited(self) -> None:
        self.scorer._exited(self.generation)


def _idle_priority() -> None:
    """Once loaded, the process scores on what CPU the machine leaves idle (SCHED_IDLE), so that its wake-ups
    never take a core from the event loop. Measured on 2 cores shared with the model server and the load: at
    normal priority, the client's p50 at 500 calls/s rose by a fifth (bench/cpu_per_call.py). Where no CPU is
    left idle it falls behind, and the worker scores the prompts, as it did before. Its start (imports, the
    model: about 0.4 s) is at normal priority: at idle priority a busy machine would never let it finish."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: the lowest priority there is, where there is one
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, 0, 19)


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


def _send(out: IO[bytes], message: object) -> None:
    out.write(_frame(message))
    out.flush()


def serve(source: IO[bytes], out: IO[bytes]) -> None:
    """The process's side: read prompts until the input ends, answer each."""
    from floodwall.defense.classifier import shipped
    from floodwall.defense.prompts import load_rules

    screen, model = Screen(load_rules()), shipped()
    _idle_priority()
    _send(out, _READY)
    while True:
        head = source.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        (size,) = _FRAME.unpack(head)
        ident, text, with_model = pickle.loads(source.read(size))
        try:
            verdict = screen.score(text)
            probability = model.probability(plain(text)) if with_model else 0.0
            _send(out, (ident, (verdict.score, verdict.rules), probability if math.isfinite(probability) else 0.0))
        except Exception:  # one prompt the scoring could not read: the caller scores it (and says so)
            _send(out, (ident, None, 0.0))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the service's to handle; its end is ours
    # the answers go on a private copy of stdout: anything else printed goes to stderr, not into a frame
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
