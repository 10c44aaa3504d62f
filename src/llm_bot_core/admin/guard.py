"""The rules Directus's roles cannot express without a license: presets, bookmarks, comments.

`GuardProvisioner` keeps the guard flow (layout.GUARD_FLOW) in its provisioned state and removes
shared presets nobody but provisioning should have made. Like `provision.py`, it reads first and
writes only what differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from llm_bot_core.admin.layout import GUARD_CHECKS, GUARD_FLOW, GUARD_FLOW_ID


class ProvisioningError(RuntimeError):
    """Directus refused a provisioning step, or the backend's tables are missing."""


def checked(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """The response of a request that must succeed."""
    response = client.request(method, path, **kwargs)
    if response.status_code >= 400:
        raise ProvisioningError(f"{method} {path} -> {response.status_code}: {response.text}")
    return response


def data(response: httpx.Response) -> Any:
    """The `data` of a Directus response that must have succeeded."""
    if response.status_code >= 400:
        raise ProvisioningError(
            f"{response.request.method} {response.request.url.path} -> "
            f"{response.status_code}: {response.text}"
        )
    return response.json()["data"]


def differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in desired.items())


@dataclass
class GuardProvisioner:
    client: httpx.Client
    changes: list[str] = field(default_factory=list)

    def flow(self) -> None:
        """The guard flow and its operations, exactly as layout.py describes them."""
        found = data(self.client.get("/flows", params={"filter[id][_eq]": GUARD_FLOW_ID}))
        if not found:
            checked(self.client, "POST", "/flows", json={"id": GUARD_FLOW_ID, **GUARD_FLOW})
            self.changes.append("created the guard flow")
        elif differs(found[0], GUARD_FLOW):
            checked(self.client, "PATCH", f"/flows/{GUARD_FLOW_ID}", json=GUARD_FLOW)
            self.changes.append("updated the guard flow")
        ids = {check.key: check.id for check in GUARD_CHECKS}
        existing = {
            op["id"]: op
            for op in data(
                self.client.get(
                    "/operations", params={"filter[flow][_eq]": GUARD_FLOW_ID, "limit": "-1"}
                )
            )
        }
        # Successors first: an operation can only point at one that exists.
        for position, check in reversed(list(enumerate(GUARD_CHECKS))):
            desired = {
                "name": check.key.replace("_", " "),
                "key": check.key,
                "type": check.type,
                "options": check.options,
                "resolve": ids[check.resolve] if check.resolve else None,
                "reject": ids[check.reject] if check.reject else None,
                "position_x": 20 + 20 * position,
                "position_y": 1,
            }
            current = existing.pop(check.id, None)
            if current is None:
                body = {"id": check.id, "flow": GUARD_FLOW_ID, **desired}
                checked(self.client, "POST", "/operations", json=body)
                self.changes.append(f"created guard check {check.key}")
            elif differs(current, desired):
                checked(self.client, "PATCH", f"/operations/{check.id}", json=desired)
                self.changes.append(f"updated guard check {check.key}")
        for stray in existing:
            checked(self.client, "DELETE", f"/operations/{stray}")
            self.changes.append(f"removed an operation added to the guard flow ({stray})")
        first = GUARD_CHECKS[0].id
        current_first = data(self.client.get(f"/flows/{GUARD_FLOW_ID}"))["operation"]
        if current_first != first:
            checked(self.client, "PATCH", f"/flows/{GUARD_FLOW_ID}", json={"operation": first})
            self.changes.append("pointed the guard flow at its first check")

    def sweep_shared_presets(self, keep: Iterable[int]) -> None:
        """Remove presets and bookmarks without a user, except provisioning's own (`keep`).

        A shared preset is a role's or everyone's default view: one planted with a filter
        hides rows from everybody it applies to. Directus records no author for presets, so a
        planted one cannot be told from an administrator's; shared views are therefore
        provisioning's alone (layout.py), and personal ones are each user's own.
        """
        keep = set(keep)
        shared = data(
            self.client.get(
                "/presets",
                params={
                    "filter[user][_null]": "true",
                    "fields": "id,collection,role,bookmark",
                    "limit": "-1",
                },
            )
        )
        for preset in shared:
            if preset["id"] in keep:
                continue
            checked(self.client, "DELETE", f"/presets/{preset['id']}")
            scope = f"role {preset['role']}" if preset["role"] else "everyone"
            kind = f"bookmark {preset['bookmark']!r}" if preset["bookmark"] else "default view"
            self.changes.append(
                f"removed a shared {kind} of {preset['collection']} (for {scope})"
            )
