"""Prompt screening before a call is admitted: score the prompt by the rules and by the classifier, spot
campaigns, and act as the level's policy says (log, flag with a strike on the account, or refuse). Bounded
work on the event loop: see defense/prompts and defense/classifier. Also what /admin/api/explain says about
a prompt."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from floodwall import logs
from floodwall.defense.classifier import PromptModel, shipped
from floodwall.defense.conversations import Conversations
from floodwall.defense.prompts import Campaigns, PromptPolicy, Screen, joined, plain, prompt_parts
from floodwall.defense.prompts import Verdict as PromptVerdict
from floodwall.defense.scorer import Scorer, Scores
from floodwall.errors import ApiError
from floodwall.limits import Bucket, Caller, Verdict
from floodwall.principal import Principal
from floodwall.state.store import Held, Store, held_buckets
from floodwall.telemetry.traffic import Traffic

log = logging.getLogger("floodwall.defense")
CAMPAIGN = "campaign/near-duplicate"
# a prompt with no strike held for it waits a moment for one, looking again as soon as one of its account's
# prompts here gives its strike back, and after each of these pauses (seconds: another process's are only seen
# by looking); past the last (70 ms in all), it is scored on its path
HOLD_WAITS = (0.01, 0.02, 0.04)
# a prompt whose call waits for its verdict (refused where it flags, or let through with no strike held) is
# scored by the scorer process, the event loop free meanwhile; by the worker itself where the process is
# PATH_BEHIND seconds behind (a prompt unanswered that long, on idle CPU while the machine is busy, or that much
# work queued), or gives no answer within PATH_WAIT
PATH_BEHIND = 0.02
PATH_WAIT = 0.1
UNHELD_WAIT = 1.0
MODEL = "model"  # the reason's name when the classifier flagged a prompt the rules let pass


class Aside:
    """A prompt's scoring left off its call's path: run once, when the call ends (`end`) or AFTER seconds into
    it, whichever comes first, so a long stream's strike still counts soon; until then a strike is held for
    it in the Store (Held), so the account's next calls see it as spent. At either the prompt goes to the
    scorer process (`submit`) where it can take it, and its answer (`scored`) runs this, up to LATE (past
    which the process is behind, and this scores it). `judge` says whether it spent a strike; `done` is told
    once it has run.

    Not sent when it was screened: the pipe write wakes the process and costs the loop 30-50 µs, which then
    falls after the answer is out (a short call) or while the model works (a longer one) instead of before the
    upstream request. AFTER is short: the strike is held until the prompt is scored, and an account's calls in
    flight beyond its strikes wait for one (bench/busy_account.py: at 50 ms, 64 calls in flight of 200 ms each
    had 31% of their prompts scored on their path after waiting 70 ms; at 5 ms, none, while the process keeps
    up: one swamped by other accounts' long prompts answers later, and the strikes stay held meanwhile)."""

    AFTER = 0.005
    LATE = 1.0

    def __init__(self, judge: Callable[[Scores | None], bool], done: Callable[[Aside], None] | None = None,
                 submit: Callable[[Callable[[Scores | None], None]], bool] | None = None) -> None:
        self._judge: Callable[[Scores | None], bool] | None = judge
        self._done = done
        self._submit = submit
        self._scores: Scores | None = None
        self._awaited = False
        self._ended = self._overdue = False
        self._timer = asyncio.get_running_loop().call_later(self.AFTER, self._due)

    def _due(self) -> None:
        self._overdue = True
        if self._sent():  # the process's answer runs it, unless it comes LATE
            self._timer = asyncio.get_running_loop().call_later(self.LATE - self.AFTER, self.run)
        else:
            self.run()

    def _sent(self) -> bool:
        """The prompt handed to the scorer process, once, where it takes it: True while its answer is awaited."""
        submit, self._submit = self._submit, None
        if submit is not None and self._judge is not None and submit(self.scored):
            self._awaited = True
        return self._awaited

    def scored(self, scores: Scores | None) -> None:
        """The scorer process's answer (None: it could not score the prompt, so this does)."""
        self._awaited = False
        self._scores = scores
        if self._ended or self._overdue:
            self.run()

    def end(self) -> None:
        """The call's answer is out."""
        self._ended = True
        if not self._sent():
            self.run()

    def run(self) -> bool:
        """Score the prompt unless that was done; True when that spent a strike."""
        judge, self._judge = self._judge, None
        if judge is None:
            return False
        self._timer.cancel()
        if self._done is not None:
            self._done(self)
        return judge(self._scores)


class PromptGuard:
    """The policy's [prompts] table applied to one call: `strike_buckets` gives an account's prompt-strike
    limits (the edge policy's rules for the prompt-strike class). `model` is the classifier beside the rules,
    the shipped one unless told. `scorer`, a process running the shipped rules and classifier, scores the
    prompts left aside, where it can."""

    def __init__(self, policy: PromptPolicy, screen: Screen, campaigns: Campaigns, store: Store,
                 strike_buckets: Callable[[str, Caller], Sequence[Bucket]], traffic: Traffic | None = None,
                 model: PromptModel | None = None, scorer: Scorer | None = None) -> None:
        self.policy = policy
        self.scorer = scorer
        self.screen = screen
        self.model = model or shipped()
        self._model_failed_at = 0.0
        self.campaigns = campaigns
        self.store = store
        self.strike_buckets = strike_buckets
        self.traffic = traffic or Traffic()
        self._asides: dict[int, set[Aside]] = {}  # per account, its calls' prompts not scored yet
        self._hitting: set[asyncio.Task[None]] = set()  # strikes being spent with none held (Redis)
        # per account, its prompts waiting for a strike to hold: woken, the first first, as one is given back here
        self._waiting: dict[int, dict[asyncio.Future[None], None]] = {}
        self.conversations = Conversations()

    def action(self, level: str) -> str:
        return self.policy.actions.get(level, "off")

    async def check(self, principal: Principal, body: dict[str, object], tier: str, level: str,
                    strikes: Sequence[tuple[Bucket, Verdict]] | None = None,
                    held: Held | None = None) -> Aside | None:
        """Raise the refusal when the policy refuses this prompt (or its account is out of strikes). The gate
        looked at the account's strikes in its own round trip (`strikes`) and held one of them for this prompt
        there (`held`, None where none was left to hold: the account's strikes spent or held by its other
        prompts in flight, in any process); without the gate's look, both are done here, in one round trip.

        Where the level's action only logs or flags, the prompt's score cannot change this call's answer (a
        strike counts against the account's next calls): the scoring is returned, to run once the call has
        ended or AFTER into it (`Aside`), not on the call's path. Where it refuses, the call waits for it. A
        prompt goes on unscored at a flag level only with a strike held for it (it waits a moment for one, or is
        scored on its path and refused if it flags), so the flagged prompts let through never outnumber the
        strikes, whatever the number of processes that let them through. The strike held is given back when
        this returns, unless the prompt aside took it or the prompt spent it."""
        try:
            action = self.action(level)
            if action == "off":
                return None
            parts = prompt_parts(body)
            text = joined(parts)
            if not text:
                return None
            if strikes is None:
                buckets = self.strike_buckets(level, Caller(0, 0, tier, principal.user_id, principal.key_id))
                strikes, held = await self._look(buckets, hold=action == "flag")
            if strikes and action != "log":
                waits = [verdict.retry_after for _, verdict in strikes if not verdict.allowed]
                if waits:
                    raise _strikes_spent(strikes, max(waits))
            if action == "refuse":
                scores = await self._scored_now(text, level)
                self.judge(principal, text, action, level, strikes, scores, parts=parts, held=held)
                return None
            if action == "flag" and strikes and (held is None or not held.buckets) and self.store.holding():
                strikes, held = await self._await_hold(principal.user_id, [bucket for bucket, _ in strikes])
                if held is None and self.store.holding():
                    self.traffic.event("prompt.unheld")
                    scores = await self._scored_now(text, level)
                    self.judge(principal, text, action, level, strikes, scores, parts=parts, unheld=True)
                    return None
            # (where the Store holds nothing, Redis away, the prompt goes aside without: the strikes are then
            # counted in each process, as every limit is; at log no strike is spent, and the hold is given back
            # below)
            return self._aside(principal, text, action, level, strikes, parts,
                               held.take() if held is not None and action == "flag" else None)
        finally:
            if held is not None:  # the gate's, or its own: given back now, unless the aside took it or the
                self._give_back(principal.user_id, held)  # prompt spent it (not when the call ends: a slow
                # call would hold it for nothing)

    async def _scored_now(self, text: str, level: str) -> Scores | None:
        """The scorer process's scores for a prompt whose call waits for them: the event loop stays free for
        the other calls meanwhile (16 KiB of prompt is some 3 ms of the classifier's). None where the process
        is behind (PATH_BEHIND) or cannot say within PATH_WAIT (starting, starved, failed): the caller then scores
        the prompt itself."""
        scorer = self.scorer
        if scorer is None or scorer.behind(PATH_BEHIND):
            return None
        answer: asyncio.Future[Scores | None] = asyncio.get_running_loop().create_future()

        def reply(scores: Scores | None) -> None:
            if not answer.done():  # (the call may have gone: timed out, or its client left)
                answer.set_result(scores)

        if not scorer.submit(text, self._asks_model(level), reply, urgent=True):
            return None
        try:
            async with asyncio.timeout(PATH_WAIT):
                return await answer
        except TimeoutError:
            self.traffic.event("prompt.path_late")
            return None

    def _give_back(self, account: int, held: Held) -> None:
        """Release what `held` still holds, and wake the first of the account's prompts waiting for a strike to
        hold (here: another process's give-backs are only seen by looking)."""
        if not held.buckets:
            return
        held.release()
        waiting = self._waiting.get(account)
        while waiting:
            waiter = next(iter(waiting))
            del waiting[waiter]
            if not waiter.done():
                waiter.set_result(None)
                break

    async def _given_back(self, account: int, most: float) -> bool:
        """Whether one of the account's strikes is given back here within `most` seconds."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(account, {})
        waiting[waiter] = None
        try:
            await asyncio.wait((waiter,), timeout=most)
            return waiter.done() and not waiter.cancelled()
        finally:
            if not waiter.done():
                waiter.cancel()
            waiting.pop(waiter, None)
            if not waiting and self._waiting.get(account) is waiting:
                del self._waiting[account]

    def _aside(self, principal: Principal, text: str, action: str, level: str,
               strikes: Sequence[tuple[Bucket, Verdict]], parts: Sequence[str], held: Held | None) -> Aside:
        scorer = self.scorer
        aside = Aside(functools.partial(self._judge_aside, principal, text, action, level, strikes, parts, held),
                      functools.partial(self._settled, principal.user_id),
                      functools.partial(scorer.submit, text, self._asks_model(level), account=principal.user_id)
                      if scorer is not None else None)
        self._asides.setdefault(principal.user_id, set()).add(aside)
        return aside

    async def _await_hold(self, account: int,
                          buckets: Sequence[Bucket]) -> tuple[list[tuple[Bucket, Verdict]], Held | None]:
        """A strike held for a prompt that found none (the account's others in flight hold them all), where
        one is given back within HOLD_WAITS; refused unscored where the strikes run out meanwhile. None where
        none came: the prompt is then scored on its call's path. (Refusing it unscored instead would close the
        oracle that path leaves, but refused clean clients: 129 of 200 calls at once, 180 of 200 with the
        scorer process behind, and 1 of 3 with 9 strikes spent: an adversarial review.)"""
        loop = asyncio.get_running_loop()
        start = loop.time()
        looks = iter(itertools.accumulate(HOLD_WAITS))  # when to look, unless woken first
        look_at = start + next(looks)
        deadline = start + sum(HOLD_WAITS)
        while True:
            woken = await self._given_back(account, max(0.0, min(look_at, deadline) - loop.time()))
            if not woken:
                look_at = start + next(looks, math.inf)
            # (woken, the strike may be taken by a call's look before this one's: that look is not one of the
            # scheduled, and the wait goes on to its deadline)
            strikes, held = await self._look(buckets, hold=True)
            waits = [verdict.retry_after for _, verdict in strikes if not verdict.allowed]
            if waits:
                if held is not None:
                    self._give_back(account, held)
                raise _strikes_spent(strikes, max(waits))
            if held is not None or not self.store.holding():  # (Redis went away meanwhile: none is held)
                return strikes, held
            if look_at == math.inf or loop.time() >= deadline:  # the last scheduled look, or past the deadline
                return strikes, None

    async def _look(self, buckets: Sequence[Bucket], hold: bool) -> tuple[list[tuple[Bucket, Verdict]], Held | None]:
        """The account's strikes, and one held for this prompt where `hold` and one is left (a round trip)."""
        if not buckets:
            return [], None
        holding = held_buckets(buckets) if hold else []
        verdicts = await self.store.hit((), buckets, holding)
        found = verdicts[len(buckets):]
        return (list(zip(buckets, verdicts[:len(buckets)], strict=True)),
                Held(self.store, holding) if holding and all(verdict.allowed for verdict in found) else None)

    def settle(self) -> None:
        """Score every prompt still aside, now: the service is stopping, and their timers would not fire."""
        for account in list(self._asides):
            for aside in self._asides.pop(account, ()):
                aside.run()

    def _settled(self, account: int, aside: Aside) -> None:
        asides = self._asides.get(account)
        if asides is not None:
            asides.discard(aside)
            if not asides:
                del self._asides[account]

    def judge(self, principal: Principal, text: str, action: str, level: str,
              strikes: Sequence[tuple[Bucket, Verdict]], scores: Scores | None = None,
              parts: Sequence[str] = (), held: Held | None = None, unheld: bool = False) -> bool:
        """Score the prompt by the rules, the classifier (unless the scorer process did: `scores`) and the
        campaigns; when that flags it, log it and spend a strike (flag, refuse; not where a charged conversation
        goes on, defense/conversations.py: `parts` are the prompt's messages): the one `held` for it where there
        is one, and raise the refusal (refuse). `unheld`: no strike could be held for it, so a prompt that spends
        one is also refused as the strikes' refusal. True when a strike was spent."""
        verdict, probability = scores or (self.screen.score(text), self.probability(text, level))
        senders = self.campaigns.seen(text, principal.user_id)
        reason = self._reason(verdict, probability, senders, level)
        if reason is None:
            return False
        rules = verdict.rules + ((CAMPAIGN,) if senders >= self.policy.campaign else ())
        charging = action in ("flag", "refuse") and bool(strikes)
        chain = self.conversations.chain(parts) if charging and parts else None
        went_on = self.conversations.went_on(principal.user_id, chain) if chain else None
        history = False
        if went_on is not None:  # a charged conversation going on: unless its new messages flag on their own
            new = parts[went_on:]
            history = sum(map(len, new)) + len(new) <= Conversations.FRESH and \
                not self._flags(joined(new), level)
        self.traffic.event("prompt.history" if history else f"prompt.{action}")
        logs.event(log, "prompt_flagged", logging.INFO if history else logging.WARNING, account=principal.user_id,
                   key=principal.key_id, score=verdict.score, model_probability=round(probability, 4),
                   rules=list(rules), campaign_accounts=senders, action=action, reason=reason, defense_level=level,
                   history=history)
        spent = charging and not history
        if chain is not None:
            self.conversations.charged(principal.user_id, chain, went_on if history else None)
        if spent:
            self._spend([bucket for bucket, _ in strikes], held)
        if spent and unheld:
            # refused, and a strike spent where one is left: the prompts aside are not yet scored, and one more
            # flagged let through would pass the strikes. (Its refusal still says it flagged: a known gap.)
            raise _strikes_spent(strikes, UNHELD_WAIT)
        if action == "refuse":
            raise ApiError(400, "This request was refused by the service's prompt screening (it looks like an "
                           "attempt to override the model's instructions or safeguards).", "content_policy_violation",
                           param="messages", reason=reason)
        return spent

    def _judge_aside(self, principal: Principal, text: str, action: str, level: str,
                     strikes: Sequence[tuple[Bucket, Verdict]], parts: Sequence[str], held: Held | None,
                     scores: Scores | None) -> bool:
        try:
            return self.judge(principal, text, action, level, strikes, scores, parts, held)
        except Exception:  # a callback's exception would reach only the loop's handler
            self.traffic.event("prompt.screening_error")
            log.exception("prompt screening failed after the call went on")
            return False
        finally:
            if held is not None:
                self._give_back(principal.user_id, held)  # (nothing, where the prompt spent it)

    def strike(self, principal: Principal, tier: str, level: str) -> bool:
        """Spend one of the account's prompt strikes where the level's action spends them on a flagged prompt
        (an answer that gave a canary away: inference/canaries.py). True when one was spent."""
        if self.action(level) not in ("flag", "refuse"):
            return False
        buckets = self.strike_buckets(level, Caller(0, 0, tier, principal.user_id, principal.key_id))
        if buckets:
            self._spend(buckets, None)
        return bool(buckets)

    def _spend(self, strikes: Sequence[Bucket], held: Held | None) -> None:
        """Spend a strike. The one held for the prompt becomes it: charged without asking, with the call's
        other reconciliations (no round trip of its own). With none held, one is spent only where the account
        has one left (a hit, not a charge): a burst of flagged prompts with none held cannot overdraw the
        account into hours of refusals (an adversarial review: 50 at once, 123 minutes). The held count needs
        no charge: a hold counts at least the strikes spent (Store.hit)."""
        if held is not None and held.spend():
            self.store.charge_later(strikes)
        elif self.store.decide_now(strikes) is None:  # a round trip (Redis): not on the call's path
            task = asyncio.get_running_loop().create_task(self._hit(strikes))
            self._hitting.add(task)
            task.add_done_callback(self._hitting.discard)

    async def _hit(self, strikes: Sequence[Bucket]) -> None:
        try:
            await self.store.hit(strikes)
        except Exception:  # (the Store falls back where Redis is away: anything else is a fault to see)
            log.exception("a prompt strike could not be spent")

    def probability(self, text: str, level: str) -> float:
        """The classifier's probability that the prompt is an attack (0 when the policy turned it off at this
        level, or when it could not read the prompt: a filter, not the service; counted, and logged once a
        minute)."""
        if not self._asks_model(level):
            return 0.0
        try:
            return self.model.probability(plain(text))
        except Exception:
            self.traffic.event("prompt.model_error")
            if time.monotonic() - self._model_failed_at > 60:
                self._model_failed_at = time.monotonic()
                log.exception("the prompt classifier failed; the prompt goes on by the rules alone")
            return 0.0

    def _asks_model(self, level: str) -> bool:
        return self.policy.model_threshold(level) < 1

    def _flags(self, text: str, level: str) -> bool:
        """The rules or the classifier flag this text (the campaigns aside: they are whole prompts')."""
        return self._reason(self.screen.score(text), self.probability(text, level), 0, level) is not None

    def _reason(self, verdict: PromptVerdict, probability: float, senders: int, level: str) -> str | None:
        """One verdict from the three: the heaviest rule when the rules flag the prompt, else the model when
        it does, else the campaign when enough accounts sent it; None when nothing flags it."""
        policy = self.policy
        if verdict.score >= policy.threshold:
            return verdict.reason
        if probability >= policy.model_threshold(level):
            return f"prompt/{MODEL}"
        return f"prompt/{CAMPAIGN}" if senders >= policy.campaign else None

    def explain(self, text: str, level: str) -> dict[str, Any]:
        """Screening's verdict for this prompt at this level: the rules that matched, the model's probability,
        and the campaign, if the accounts on file that sent it (this one aside) are already enough."""
        policy, action = self.policy, self.action(level)
        verdict = self.screen.score(text)
        probability = self.probability(text, level)
        senders = self.campaigns.peek(text)
        reason = self._reason(verdict, probability, senders, level)
        decision = "pass" if reason is None or action in ("off", "log") else \
            ("refuse" if action == "refuse" else "flag")
        return {"decision": decision, "reason": reason or "below the thresholds", "rules": list(verdict.rules),
                "score": verdict.score, "threshold": policy.threshold, "model_probability": round(probability, 4),
                "model_threshold": policy.model_threshold(level),
                "campaign": {"name": CAMPAIGN, "accounts": senders, "threshold": policy.campaign} if senders else None,
                "action": action, "level": level}


def _strikes_spent(strikes: Sequence[tuple[Bucket, Verdict]], wait: float) -> ApiError:
    return ApiError(429, "Too many of this account's prompts were flagged by the service's prompt screening, or are "
                    "still being checked. Please wait and try again.", "prompt_strikes", type="requests",
                    retry_after=wait, reason=strikes[0][0].rule)
