"""Idempotent provisioning of the admin panel through Directus's REST API.

Registers the backend's tables as collections (the specification's four and the user facts),
gives them metadata, links the sessions to their messages and summaries and a fact to its
earlier versions, creates the Operator and Viewer roles, and the guard (guard.py) that keeps
presets and comments to the roles' rules. Every step reads the current
state first and writes only what differs, so a second run changes nothing. Nothing here issues
DDL: Alembic owns the tables; Directus only stores its metadata in its own `directus_*` tables.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from llm_bot_core.admin.dashboard import INSIGHTS_READ, DashboardProvisioner
from llm_bot_core.admin.guard import GuardProvisioner, ProvisioningError, checked, data, differs
from llm_bot_core.admin.layout import (
    COLLECTIONS,
    CREATABLE_BY_OPERATOR,
    EDITABLE_BY_OPERATOR,
    FIELD_META,
    LIST_COLUMNS,
    OPERATOR,
    OPERATOR_ROLE_ID,
    PANEL_TABLES,
    READ_ONLY,
    RELATIONS,
    SORT_BY,
    SPEC_TABLES,
    VIEWER,
    VIEWER_ROLE_ID,
    Access,
    Relation,
)

__all__ = ["OPERATOR_ROLE_ID", "SPEC_TABLES", "VIEWER_ROLE_ID", "ProvisioningError", "provision"]

log = logging.getLogger(__name__)


@dataclass
class Provisioner:
    """Brings a running Directus to the desired state; `run()` returns the changes it made."""

    client: httpx.Client
    tables: tuple[str, ...] = PANEL_TABLES
    changes: list[str] = field(default_factory=list)

    @classmethod
    def login(cls, base_url: str, email: str, password: str, timeout: float = 30.0) -> Provisioner:
        client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        response = client.post("/auth/login", json={"email": email, "password": password})
        if response.status_code != 200:
            client.close()
            raise ProvisioningError(
                f"cannot log in to Directus as {email} ({response.status_code}): ADMIN_EMAIL and "
                "ADMIN_PASSWORD must match the admin user (Directus uses them only on first start)"
            )
        token = response.json()["data"]["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        return cls(client)

    def close(self) -> None:
        self.client.close()

    def run(self) -> list[str]:
        """Apply everything; a second run on an unchanged database returns an empty list."""
        self.changes = []
        # Directus caches the schema: clearing it lets a re-run see columns of new migrations.
        self._request("POST", "/utils/cache/clear", params={"system": "true"})
        columns = {table: self._register_collection(table) for table in self.tables}
        for table, names in columns.items():
            self._field_metadata(table, names)
        for relation in RELATIONS:
            if relation.collection in columns and relation.related in columns:
                self._relation(relation, columns)
        views = [self._default_view(table, columns[table]) for table in self.tables]
        self._access(OPERATOR, self._operator_permissions(columns))
        self._access(VIEWER, self._viewer_permissions())
        guard = GuardProvisioner(self.client, self.changes)
        guard.flow()
        guard.sweep_shared_presets(keep=views)
        DashboardProvisioner(self.client, self.changes).run()
        for change in self.changes:
            log.info("directus: %s", change)
        return self.changes

    # --- collections and fields ----------------------------------------------------------

    def _register_collection(self, table: str) -> list[str]:
        response = self.client.get(f"/collections/{table}")
        if response.status_code in (403, 404):
            raise ProvisioningError(
                f"table {table!r} not found in Directus's database: apply the backend's "
                "migrations first (`llm-bot-core migrate`), and point DB_* at the same database"
            )
        current = self._data(response)
        desired = COLLECTIONS.get(table, {})
        meta = current.get("meta")
        if meta is None:
            self._request(
                "PATCH", f"/collections/{table}", json={"meta": {"collection": table, **desired}}
            )
            self.changes.append(f"registered collection {table}")
        elif differs(meta, desired):
            self._request("PATCH", f"/collections/{table}", json={"meta": desired})
            self.changes.append(f"updated collection {table}")
        fields = self._data(self.client.get(f"/fields/{table}"))
        return [f["field"] for f in fields if f.get("schema") is not None]

    def _field_metadata(self, table: str, columns: Iterable[str]) -> None:
        extra = FIELD_META.get(table, {})
        read_only = READ_ONLY.get(table, frozenset())
        for column in columns:
            desired = dict(extra.get(column, {}))
            if column in read_only:
                desired["readonly"] = True
            if desired:
                self._field(table, column, desired)

    def _field(self, table: str, name: str, desired: Mapping[str, Any]) -> None:
        current = self._data(self.client.get(f"/fields/{table}/{name}"))
        meta = current.get("meta")
        if meta is None or differs(meta, desired):
            # Only `meta` is sent: without `schema` Directus leaves the column alone.
            self._request("PATCH", f"/fields/{table}/{name}", json={"meta": dict(desired)})
            self.changes.append(f"set metadata of {table}.{name}")

    def _relation(self, relation: Relation, columns: Mapping[str, list[str]]) -> None:
        if relation.field not in columns[relation.collection]:
            return
        if relation.alias:
            self._alias_field(relation)
        desired_meta = {"one_field": relation.alias, "one_deselect_action": "delete"}
        path = f"/relations/{relation.collection}/{relation.field}"
        response = self.client.get(path)
        if response.status_code in (403, 404):
            # No foreign key in the database: a metadata-only relation (schema null, no DDL).
            self._request(
                "POST",
                "/relations",
                json={
                    "collection": relation.collection,
                    "field": relation.field,
                    "related_collection": relation.related,
                    "schema": None,
                    "meta": desired_meta,
                },
            )
            self.changes.append(f"created relation {relation.collection}.{relation.field}")
            return
        meta = self._data(response).get("meta")
        if meta is None or differs(meta, desired_meta):
            self._request("PATCH", path, json={"meta": desired_meta})
            self.changes.append(
                f"linked {relation.collection}.{relation.field} → {relation.related}"
            )

    def _alias_field(self, relation: Relation) -> None:
        assert relation.alias is not None
        meta = {
            "special": ["o2m"],
            "interface": "list-o2m",
            # Sessions do not adopt other sessions' messages; removing one from the list
            # deletes it (session_id is NOT NULL, so "nullify" could never be saved).
            "options": {
                "template": relation.alias_template,
                "enableCreate": False,
                "enableSelect": False,
            },
            "display": "related-values",
            "display_options": {"template": relation.alias_template},
            "readonly": False,
            "sort": relation.alias_sort,
        }
        response = self.client.get(f"/fields/{relation.related}/{relation.alias}")
        if response.status_code in (403, 404):
            self._request(
                "POST",
                f"/fields/{relation.related}",
                json={
                    "field": relation.alias,
                    "type": "alias",
                    "schema": None,
                    "meta": meta,
                },
            )
            self.changes.append(f"created alias {relation.related}.{relation.alias}")
            return
        current = self._data(response)
        if current.get("type") != "alias":
            raise ProvisioningError(
                f"{relation.related}.{relation.alias} is a real column; cannot add the o2m alias"
            )
        if differs(current.get("meta") or {}, meta):
            self._request(
                "PATCH", f"/fields/{relation.related}/{relation.alias}", json={"meta": meta}
            )
            self.changes.append(f"updated alias {relation.related}.{relation.alias}")

    def _default_view(self, table: str, columns: list[str]) -> int:
        """The collection's global default layout (a preset with no user, role or bookmark).

        Returns its id. It filters nothing: a filter here would hide rows from everyone.
        """
        visible = [c for c in LIST_COLUMNS.get(table, []) if c in columns] or columns[:6]
        if table in SORT_BY:
            sort = [SORT_BY[table]]
        else:
            sort = ["-created_at"] if "created_at" in columns else []
        widths = {c: 420 for c in ("content",) if c in visible}
        desired = {
            "layout": "tabular",
            "layout_query": {"tabular": {"fields": visible, "sort": sort, "limit": 25}},
            "layout_options": {"tabular": {"widths": widths}},
            "filter": None,
            "search": None,
        }
        found = self._data(
            self.client.get(
                "/presets",
                params={
                    "filter[collection][_eq]": table,
                    "filter[user][_null]": "true",
                    "filter[role][_null]": "true",
                    "filter[bookmark][_null]": "true",
                    "sort": "id",
                },
            )
        )
        if not found:
            created = self._request("POST", "/presets", json={"collection": table, **desired})
            self.changes.append(f"created default view of {table}")
            return int(self._data(created)["id"])
        if differs(found[0], desired):
            self._request("PATCH", f"/presets/{found[0]['id']}", json=desired)
            self.changes.append(f"updated default view of {table}")
        return int(found[0]["id"])

    # --- roles, policies, permissions ----------------------------------------------------

    def _operator_permissions(
        self, columns: Mapping[str, list[str]]
    ) -> dict[tuple[str, str], list[str] | None]:
        wanted = self._viewer_permissions()
        for table in EDITABLE_BY_OPERATOR:
            if table in columns:
                wanted[(table, "update")] = ["*"]
                wanted[(table, "delete")] = ["*"]
        for table in CREATABLE_BY_OPERATOR:
            if table in columns:
                wanted[(table, "create")] = ["*"]
        return wanted

    def _viewer_permissions(self) -> dict[tuple[str, str], list[str] | None]:
        """Reading every panel table and the dashboard: what Viewers may, and Operators too."""
        wanted: dict[tuple[str, str], list[str] | None] = {
            (table, "read"): ["*"] for table in self.tables
        }
        for collection in INSIGHTS_READ:
            wanted[(collection, "read")] = ["*"]
        return wanted

    def _access(
        self, access: Access, permissions: Mapping[tuple[str, str], list[str] | None]
    ) -> None:
        policy = {
            "name": access.name,
            "icon": access.icon,
            "description": access.description,
            "admin_access": False,
            "app_access": True,
        }
        self._ensure_item("policies", access.policy_id, policy, f"policy {access.name}")
        role = {"name": access.name, "icon": access.icon, "description": access.description}
        self._ensure_item("roles", access.role_id, role, f"role {access.name}")
        links = self._data(
            self.client.get(
                "/access",
                params={
                    "filter[role][_eq]": access.role_id,
                    "filter[policy][_eq]": access.policy_id,
                },
            )
        )
        if not links:
            self._request(
                "POST", "/access", json={"role": access.role_id, "policy": access.policy_id}
            )
            self.changes.append(f"attached policy {access.name} to role {access.name}")
        self._permissions(access, permissions)

    def _ensure_item(
        self, collection: str, item_id: str, desired: Mapping[str, Any], label: str
    ) -> None:
        found = self._data(
            self.client.get(
                f"/{collection}",
                params={
                    "filter[id][_eq]": item_id,
                    "fields": ",".join(["id", *desired]),
                },
            )
        )
        if not found:
            self._request("POST", f"/{collection}", json={"id": item_id, **desired})
            self.changes.append(f"created {label}")
        elif differs(found[0], desired):
            self._request("PATCH", f"/{collection}/{item_id}", json=dict(desired))
            self.changes.append(f"updated {label}")

    def _permissions(
        self, access: Access, wanted: Mapping[tuple[str, str], list[str] | None]
    ) -> None:
        """The policy's permissions become exactly `wanted`: this policy is ours to manage."""
        existing = self._data(
            self.client.get(
                "/permissions",
                params={
                    "filter[policy][_eq]": access.policy_id,
                    "limit": "-1",
                },
            )
        )
        seen: set[tuple[str, str]] = set()
        for permission in existing:
            key = (permission["collection"], permission["action"])
            if key not in wanted or key in seen:
                self._request("DELETE", f"/permissions/{permission['id']}")
                self.changes.append(f"removed {access.name} permission {key[1]} {key[0]}")
                continue
            seen.add(key)
            desired: dict[str, Any] = {"fields": wanted[key], "permissions": {}, "validation": {}}
            if differs(permission, desired):
                self._request("PATCH", f"/permissions/{permission['id']}", json=desired)
                self.changes.append(f"updated {access.name} permission {key[1]} {key[0]}")
        for (collection, action), fields in wanted.items():
            if (collection, action) in seen:
                continue
            self._request(
                "POST",
                "/permissions",
                json={
                    "policy": access.policy_id,
                    "collection": collection,
                    "action": action,
                    "fields": fields,
                    "permissions": {},
                    "validation": {},
                },
            )
            self.changes.append(f"granted {access.name} {action} on {collection}")

    # --- HTTP ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return checked(self.client, method, path, **kwargs)

    @staticmethod
    def _data(response: httpx.Response) -> Any:
        return data(response)



def provision(base_url: str, email: str, password: str) -> list[str]:
    """Log in as the admin and provision; returns the changes made (empty when up to date)."""
    provisioner = Provisioner.login(base_url, email, password)
    try:
        return provisioner.run()
    finally:
        provisioner.close()
