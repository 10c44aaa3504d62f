"""The operators' Insights dashboard: what it shows, and its idempotent provisioning.

Panels read the backend's tables through Directus: messages and active users per day, tokens
and cost per day (usage_daily, kept by a trigger on llm_usage) by model and purpose, the summary
and indexing backlogs, failed jobs (job_failures) and the top users by tokens. Like
provision.py, `DashboardProvisioner` reads first and writes only what differs; panels on this
dashboard that are not listed here are removed (it is provisioning's, not a scratch pad).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from llm_bot_core.admin.guard import checked, data, differs

DASHBOARD_ID = "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0100"
DASHBOARD = {
    "name": "LLM Bot Core",
    "icon": "monitoring",
    "note": "How the bot is doing: traffic, model usage and cost, backlogs, failures. "
    "Provisioned; edits are overwritten.",
    "color": "#6644FF",
}
LAST_30_DAYS = "$NOW(-30 days)"


@dataclass(frozen=True)
class Panel:
    key: str
    id: str
    name: str
    icon: str
    type: str
    x: int
    y: int
    width: int
    height: int
    options: dict[str, Any]
    note: str | None = None

    def body(self) -> dict[str, Any]:
        return {
            "dashboard": DASHBOARD_ID,
            "name": self.name,
            "icon": self.icon,
            "type": self.type,
            "position_x": self.x,
            "position_y": self.y,
            "width": self.width,
            "height": self.height,
            "show_header": True,
            "note": self.note,
            "options": self.options,
        }


def _per_day(collection: str, date_field: str, function: str, value: str, **extra: Any) -> dict:
    return {
        "collection": collection,
        "dateField": date_field,
        "valueField": value,
        "function": function,
        "precision": "day",
        "range": "1 month",
        "missingData": "0",
        **extra,
    }


def _top(collection: str, group: str, value: str, since_field: str, limit: int = 8) -> dict:
    return {
        "collection": collection,
        "groupByField": group,
        "aggregateField": value,
        "aggregateFunction": "sum",
        "sortDirection": "desc",
        "limit": limit,
        "filter": {"_and": [{since_field: {"_gte": LAST_30_DAYS}}]},
    }


def _panel_id(n: int) -> str:
    return f"5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e{0x0100 + n:04x}"


PANELS = (
    Panel("messages", _panel_id(1), "Messages per day", "chat", "time-series", 1, 1, 24, 10,
          _per_day("messages", "created_at", "count", "id")),
    Panel("active_users", _panel_id(2), "Active users per day", "group", "time-series",
          25, 1, 24, 10,
          _per_day("messages", "created_at", "countDistinct", "user_id",
                   filter={"_and": [{"role": {"_eq": "user"}}]})),
    Panel("tokens", _panel_id(3), "Tokens per day", "token", "time-series", 1, 11, 24, 10,
          _per_day("usage_daily", "day", "sum", "total_tokens")),
    Panel("cost", _panel_id(4), "Cost per day", "payments", "time-series", 25, 11, 24, 10,
          _per_day("usage_daily", "day", "sum", "cost", decimals=4),
          note="What the provider reported (OpenRouter: USD)."),
    Panel("by_model", _panel_id(5), "Tokens by model, 30 days", "model_training",
          "metric-list", 1, 21, 16, 10, _top("usage_daily", "model", "total_tokens", "day")),
    Panel("by_purpose", _panel_id(6), "Tokens by purpose, 30 days", "category",
          "metric-list", 17, 21, 16, 10, _top("usage_daily", "purpose", "total_tokens", "day")),
    Panel("top_users", _panel_id(7), "Top users by tokens, 30 days", "leaderboard",
          "metric-list", 33, 21, 16, 10,
          _top("llm_usage", "user_id", "total_tokens", "created_at")),
    Panel("summary_backlog", _panel_id(8), "Summary backlog", "summarize", "metric",
          1, 31, 16, 6,
          {"collection": "chat_sessions", "field": "messages_since_summary", "function": "sum",
           "filter": {"_and": [{"is_active": {"_eq": True}}]}, "suffix": " messages",
           "fontSize": "medium"},
          note="Messages of active sessions not yet covered by a summary."),
    Panel("index_backlog", _panel_id(9), "Indexing backlog", "pending_actions", "metric",
          17, 31, 16, 6,
          {"collection": "rag_outbox", "field": "message_id", "function": "count",
           "suffix": " messages", "fontSize": "medium"},
          note="Messages waiting to be indexed into semantic memory."),
    Panel("failed_jobs", _panel_id(10), "Failed jobs, 7 days", "error", "metric",
          33, 31, 16, 6,
          {"collection": "job_failures", "field": "id", "function": "count",
           "filter": {"_and": [{"failed_at": {"_gte": "$NOW(-7 days)"}}]}, "fontSize": "medium",
           "conditionalFormatting": [{"operator": ">", "value": 0, "color": "#E35169"}]}),
    Panel("daily_usage", _panel_id(11), "Usage per day, model and purpose", "table_rows",
          "list", 1, 37, 24, 14,
          {"collection": "usage_daily", "sortField": "day", "sortDirection": "desc", "limit": 20,
           "displayTemplate": "{{day}} · {{model}} · {{purpose}}: {{total_tokens}} tokens, "
           "{{calls}} calls, cost {{cost}}"}),
    Panel("failures", _panel_id(12), "Latest failed jobs", "report", "list", 25, 37, 24, 14,
          {"collection": "job_failures", "sortField": "failed_at", "sortDirection": "desc",
           "limit": 10, "displayTemplate": "{{failed_at}} · {{task}}: {{error}}",
           "linkToItem": True}),
)
# What the Viewer and Operator policies need to open the dashboard (read only).
INSIGHTS_READ = ("directus_dashboards", "directus_panels")


@dataclass
class DashboardProvisioner:
    client: httpx.Client
    changes: list[str] = field(default_factory=list)

    def run(self) -> None:
        """The dashboard and exactly its panels, as this module describes them."""
        found = data(self.client.get("/dashboards", params={"filter[id][_eq]": DASHBOARD_ID}))
        if not found:
            checked(self.client, "POST", "/dashboards", json={"id": DASHBOARD_ID, **DASHBOARD})
            self.changes.append("created the dashboard")
        elif differs(found[0], DASHBOARD):
            checked(self.client, "PATCH", f"/dashboards/{DASHBOARD_ID}", json=DASHBOARD)
            self.changes.append("updated the dashboard")
        existing = {
            p["id"]: p
            for p in data(
                self.client.get(
                    "/panels", params={"filter[dashboard][_eq]": DASHBOARD_ID, "limit": "-1"}
                )
            )
        }
        for panel in PANELS:
            body = panel.body()
            current = existing.pop(panel.id, None)
            if current is None:
                checked(self.client, "POST", "/panels", json={"id": panel.id, **body})
                self.changes.append(f"created panel {panel.key}")
            elif differs(current, body):
                checked(self.client, "PATCH", f"/panels/{panel.id}", json=body)
                self.changes.append(f"updated panel {panel.key}")
        for stray in existing:
            checked(self.client, "DELETE", f"/panels/{stray}")
            self.changes.append(f"removed panel {stray} from the dashboard")
