"""The status board: everything the status page, its feed and its JSON say, read from the database in the
background and rendered ahead of time, so a view during a flood costs a dict lookup and never a query.

Each process refreshes every `status.refresh_interval` and at once after a change it made; the process
holding the lease also moves the automatic incident along (automation.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gzip
import html
import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from jinja2 import Environment
from markupsafe import Markup

from floodwall import logs
from floodwall.background import cancel
from floodwall.config import StatusSettings
from floodwall.levels import LevelControl
from floodwall.state.store import Store
from floodwall.status import components as parts
from floodwall.status.automation import AutoIncidents
from floodwall.status.incidents import COMPONENTS, Incidents, Record

log = logging.getLogger("floodwall.status")
INDICATORS = ("none", "minor", "major", "critical")
DESCRIPTIONS = {"none": "All Systems Operational", "minor": "Partially Degraded Service",
                "major": "Partial System Outage", "critical": "Major Service Outage"}
_INDICATOR_OF = {"operational": "none", "under_maintenance": "minor", "degraded_performance": "minor",
                 "partial_outage": "major", "major_outage": "critical"}
PAGE_ID = "floodwall"


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if moment else None


class StatusBoard:
    def __init__(self, settings: StatusSettings, incidents: Incidents, control: LevelControl, store: Store,
                 recent: Callable[[], dict[str, int]], registration: Callable[[], str], env: Environment,
                 automation: AutoIncidents | None) -> None:
        self.settings = settings
        self.incidents = incidents
        self.control = control
        self.store = store
        self.recent = recent
        self.registration = registration
        self.env = env
        self.automation = automation
        self.records: Sequence[Record] = ()
        self.stale = True  # no incidents read yet
        self.rendered: dict[str, bytes] = {}
        self.updated_at = dt.datetime.now(dt.UTC)
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="status-board")

    async def stop(self) -> None:
        await cancel(self._task)

    def changed(self) -> None:
        """A change made here: refresh now rather than at the next tick."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.refresh_interval)
            self._wake.clear()
            await self.refresh()

    async def refresh(self) -> None:
        try:
            self.records = await self.incidents.recent()
            self.stale = False
            automation = self.automation
            if automation is not None and await self._leading() and \
                    await automation.step(self.control.level, self.records):
                self.records = await self.incidents.recent()
        except Exception as exc:  # the database is away: keep the incidents last read, live statuses go on
            if not self.stale:
                logs.event(log, "status_refresh_failed", logging.WARNING, error=repr(exc))
            self.stale = True
        try:
            self.render()
        except Exception as exc:  # never leave the page unrendered for a bug in one part
            logs.event(log, "status_render_failed", logging.ERROR, error=repr(exc))

    async def _leading(self) -> bool:
        try:
            return await self.store.lead("status", self._owner, self.settings.refresh_interval * 3)
        except Exception:
            return False

    # what the page says

    def summary(self) -> dict[str, Any]:
        """Statuspage's summary.json, plus floodwall's own block; the other JSON routes are parts of it."""
        now = dt.datetime.now(dt.UTC)
        found = parts.components(self.control.level, self.registration(), self.recent(), self.records)
        open_ = [r for r in self.records if r.open]
        indicator = max([_INDICATOR_OF[c.status] for c in found] + [r.impact for r in open_ if r.impact in INDICATORS],
                        key=INDICATORS.index, default="none")
        changed = max([r.updated_at for r in self.records], default=self.updated_at)
        page = {"id": PAGE_ID, "name": self.settings.name, "url": "/status", "time_zone": "Etc/UTC",
                "updated_at": _iso(max(changed, self.updated_at))}
        return {
            "page": page,
            "status": {"indicator": indicator, "description": DESCRIPTIONS[indicator]},
            "components": [{
                "id": c.key, "name": c.name, "status": c.status, "description": c.description or None,
                "position": n + 1, "created_at": None, "updated_at": _iso(now), "showcase": True,
                "start_date": None, "group_id": None, "page_id": PAGE_ID, "group": False,
                "only_show_if_degraded": False} for n, c in enumerate(found)],
            "incidents": [self._incident(r) for r in open_],
            "scheduled_maintenances": [],
            "floodwall": {"defense_level": self.control.level, "registration": self.registration(),
                          "incidents_stale": self.stale},
        }

    def _incident(self, record: Record) -> dict[str, Any]:
        return {
            "id": str(record.id), "name": record.name, "status": record.status, "impact": record.impact,
            "created_at": _iso(record.created_at), "updated_at": _iso(record.updated_at),
            "monitoring_at": _iso(record.monitoring_at), "resolved_at": _iso(record.resolved_at),
            "started_at": _iso(record.created_at), "shortlink": f"/status#incident-{record.id}", "page_id": PAGE_ID,
            "components": [{"id": key, "name": COMPONENTS[key], "status": status}
                           for key, status in record.components.items() if key in COMPONENTS],
            "incident_updates": [{
                "id": str(u.id), "status": u.status, "body": u.body, "incident_id": str(record.id),
                "created_at": _iso(u.at), "updated_at": _iso(u.at), "display_at": _iso(u.at),
                "affected_components": None, "deliver_notifications": False} for u in record.updates],
        }

    def render(self) -> None:
        summary = self.summary()
        page = summary["page"]
        incidents = [self._incident(r) for r in self.records[:50]]
        rendered = {
            "summary": _json(summary),
            "status": _json({"page": page, "status": summary["status"]}),
            "components": _json({"page": page, "components": summary["components"]}),
            "unresolved": _json({"page": page, "incidents": summary["incidents"]}),
            "incidents": _json({"page": page, "incidents": incidents}),
            "page": self.env.get_template("status.html").render(self._page_context(summary)).encode(),
            "atom": self.env.get_template("history.atom.xml").render(
                page=page, incidents=self.records[:50], contents={r.id: _timeline_html(r) for r in self.records[:50]}
            ).encode(),
        }
        # browsers and CDNs take gzip: compressed once here, not per view (the page is tens of kilobytes)
        self.rendered = {**rendered, **{f"{key}.gz": gzip.compress(body, 6) for key, body in rendered.items()}}

    def _page_context(self, summary: dict[str, Any]) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        open_ = [r for r in self.records if r.open]
        bars = {}
        for key in COMPONENTS:
            percent, days = parts.uptime(self.records, key, now)
            bars[key] = {"percent": percent, "cells": Markup("".join(map(_bar, days)))}
        return {"summary": summary, "open": open_, "past": [r for r in self.records if not r.open][:20],
                "bars": bars, "name": self.settings.name, "stale": self.stale, "now": now}


@functools.lru_cache(maxsize=1024)
def _bar(day: tuple[dt.date, str]) -> str:
    """A day's cell in a component's 90-day bar, made here, not in the template: 450 cells through Jinja's
    filters and escaping were most of a render's 6 ms on the event loop (every refresh_interval)."""
    date, status = day
    return f'<span class="bar status-{html.escape(status)}" title="{date.isoformat()}: ' \
           f'{html.escape(status.replace("_", " "))}"></span>'


def _timeline_html(record: Record) -> str:
    """An incident's updates as HTML, for the feed (the template escapes it once more, as Atom's type="html"
    wants)."""
    return "".join(f"<p><small>{u.at.strftime('%Y-%m-%d %H:%M UTC')}</small><br>"
                   f"<strong>{u.status.capitalize()}</strong> - {html.escape(u.body)}</p>" for u in record.updates)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
