"""What the admin panel should look like: collections, fields, relations, roles and their rights.

Data only; `provision.py` brings a running Directus to this state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SPEC_TABLES = ("chat_sessions", "messages", "conversation_summaries", "embeddings")
# What the bot knows about each user (issue 14). fact_extraction (watermarks and extraction
# costs) is not registered: its primary key is composite, which Directus does not support.
FACT_TABLES = ("facts",)
# Usage accounting (read-only everywhere) and operators' per-user limits and bans.
USAGE_TABLES = ("llm_usage", "bot_users")
# Personas operators edit (issue 17), the chats' choices, and what the dashboard reads: failed
# jobs, the daily usage rollup and the indexing queue (read-only everywhere).
PERSONA_TABLES = ("personas", "chat_settings")
DASHBOARD_TABLES = ("job_failures", "usage_daily", "rag_outbox")
PANEL_TABLES = SPEC_TABLES + FACT_TABLES + USAGE_TABLES + PERSONA_TABLES + DASHBOARD_TABLES

# Fixed ids make "is it already there?" a lookup by id, immune to renames in the UI.
OPERATOR_ROLE_ID = "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0001"
OPERATOR_POLICY_ID = "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0002"
VIEWER_ROLE_ID = "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0003"
VIEWER_POLICY_ID = "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0004"

COLLECTIONS: dict[str, dict[str, Any]] = {
    "chat_sessions": {
        "icon": "forum",
        "note": "Dialogue sessions: one active session per chat; /start closes it.",
        "display_template": "{{user_id}} · {{chat_id}} · {{created_at}}",
        "sort": 1,
    },
    "messages": {
        "icon": "chat",
        "note": "The full log of user and assistant messages.",
        "display_template": "{{role}}: {{content}}",
        "sort": 2,
    },
    "conversation_summaries": {
        "icon": "summarize",
        "note": "Progressive summaries of a session (summary memory).",
        "display_template": "v{{version}}: {{content}}",
        "sort": 3,
    },
    "embeddings": {
        "icon": "memory",
        "note": "Semantic-memory records; the vectors live in the vector store.",
        "display_template": "{{role}}: {{content}}",
        "sort": 4,
    },
    "facts": {
        "icon": "psychology",
        "note": "What the bot knows about each user; the current ones (Superseded At empty) are "
        "in every prompt. Editing the content keeps the old wording as an earlier version.",
        "display_template": "{{content}}",
        "sort": 5,
    },
    "llm_usage": {
        "icon": "receipt_long",
        "note": "One row per model call: user, chat, purpose, model, tokens and cost.",
        "display_template": "{{purpose}} · {{model}} · {{user_id}}",
        "sort": 6,
    },
    "bot_users": {
        "icon": "manage_accounts",
        "note": "Per-user daily token limits and bans; a row appears with a user's first call.",
        "display_template": "{{user_id}}",
        "sort": 7,
    },
    "personas": {
        "icon": "theater_comedy",
        "note": "System prompts. One is the default; selectable ones are offered by /mode. "
        "A change reaches the next answer within seconds, without a restart.",
        "display_template": "{{name}}",
        "sort": 8,
    },
    "chat_settings": {
        "icon": "tune",
        "note": "The persona each chat chose with /mode (empty: the default).",
        "display_template": "{{chat_id}}",
        "sort": 9,
    },
    "job_failures": {
        "icon": "error",
        "note": "Background jobs (summaries, fact extraction) that failed after their retries.",
        "display_template": "{{task}} · {{failed_at}}",
        "sort": 10,
    },
    "usage_daily": {
        "icon": "bar_chart",
        "note": "Model usage per UTC day, model and purpose (kept by the database).",
        "display_template": "{{day}} · {{model}} · {{purpose}}",
        "sort": 11,
    },
    "rag_outbox": {
        "icon": "pending_actions",
        "note": "Messages waiting to be indexed into semantic memory.",
        "display_template": "{{message_id}}",
        "sort": 12,
        "hidden": True,
    },
}

# Columns the backend maintains: read-only in the app. Only there: a permission limited to some
# fields is a "custom permission rule", which unlicensed Directus 12 refuses to store.
READ_ONLY: dict[str, frozenset[str]] = {
    "chat_sessions": frozenset(
        {"id", "user_id", "chat_id", "created_at", "messages_since_summary"}
    ),
    # `attachments`: the pictures' record and descriptions (memory/pictures.py).
    "messages": frozenset(
        {"id", "session_id", "tokens", "created_at", "input_mode", "attachments"}
    ),
    "conversation_summaries": frozenset(
        {"id", "session_id", "version", "created_at", "last_message_id"}
    ),
    "embeddings": frozenset({"id", "session_id", "message_id", "created_at"}),
    # An operator corrects `content` (and `importance`); the rest is provenance and history.
    "facts": frozenset(
        {
            "id",
            "user_id",
            "source",
            "source_message_ids",
            "chat_id",
            "created_at",
            "superseded_at",
            "superseded_by",
            "lexemes",
        }
    ),
    "llm_usage": frozenset(
        {
            "id",
            "created_at",
            "user_id",
            "chat_id",
            "purpose",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "cost",
            "audio_seconds",
        }
    ),
    "bot_users": frozenset({"created_at"}),
    "personas": frozenset({"id", "created_at", "updated_at"}),
    "chat_settings": frozenset({"updated_at"}),
    "job_failures": frozenset({"id", "failed_at", "task", "arguments", "error", "attempts"}),
    "usage_daily": frozenset(
        {
            "id",
            "day",
            "model",
            "purpose",
            "calls",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cost",
        }
    ),
    "rag_outbox": frozenset(
        {"message_id", "attempts", "next_attempt_at", "last_error", "enqueued_at"}
    ),
}

SESSION_TEMPLATE = "{{user_id}} · {{chat_id}}"
MESSAGE_TEMPLATE = "{{role}}: {{content}}"
ROLE_CHOICES = [{"text": r, "value": r} for r in ("user", "assistant", "system", "tool")]
FACT_SOURCES = [{"text": s, "value": s} for s in ("extracted", "user", "operator")]
INPUT_MODES = [{"text": m, "value": m} for m in ("text", "voice")]


def _many_to_one(template: str) -> dict[str, Any]:
    """A foreign key shown as a dropdown of the related rows, labelled by `template`."""
    return {
        "interface": "select-dropdown-m2o",
        "options": {"template": template},
        "display": "related-values",
        "display_options": {"template": template},
    }


# Field metadata beyond `readonly`, for fields that exist in the table.
FIELD_META: dict[str, dict[str, dict[str, Any]]] = {
    # The session form: who and state first (two columns), its messages below.
    "chat_sessions": {
        "user_id": {"sort": 1, "width": "half"},
        "chat_id": {"sort": 2, "width": "half"},
        "is_active": {"sort": 3, "width": "half", "interface": "boolean", "display": "boolean"},
        # The backend keeps it; the REST API would store any number (readonly is the form's).
        "messages_since_summary": {
            "sort": 4,
            "width": "half",
            "validation": {"_and": [{"messages_since_summary": {"_null": True}}]},
            "validation_message": "Maintained by the backend; it cannot be set by hand.",
        },
        "created_at": {
            "sort": 5,
            "width": "half",
            "display": "datetime",
            "display_options": {"relative": True},
        },
        "closed_at": {"sort": 6, "width": "half", "interface": "datetime", "display": "datetime"},
        "id": {"sort": 20},
    },
    "messages": {
        "session_id": _many_to_one(SESSION_TEMPLATE),
        "role": {
            "interface": "select-dropdown",
            "options": {"choices": ROLE_CHOICES},
            "display": "labels",
            "display_options": {"choices": ROLE_CHOICES},
            # The database's CHECK would refuse it too, but Directus reports that as a 500.
            "validation": {"_and": [{"role": {"_in": [c["value"] for c in ROLE_CHOICES]}}]},
            "validation_message": "The role is one of: user, assistant, system, tool.",
        },
        "content": {"interface": "input-multiline", "display": "formatted-value"},
        "created_at": {"display": "datetime", "display_options": {"relative": True}},
        # Typed, or spoken: the content is then the transcript of a voice message.
        "input_mode": {
            "display": "labels",
            "display_options": {"choices": INPUT_MODES},
            "note": "voice: the content is the transcript of a voice message.",
        },
        "attachments": {
            "interface": "input-code",
            "options": {"language": "JSON"},
            "note": "Pictures sent with the message: caption, size, description.",
        },
    },
    "conversation_summaries": {
        "session_id": _many_to_one(SESSION_TEMPLATE),
        "content": {"interface": "input-multiline"},
        "created_at": {"display": "datetime", "display_options": {"relative": True}},
    },
    "embeddings": {
        "session_id": _many_to_one(SESSION_TEMPLATE),
        "message_id": _many_to_one(MESSAGE_TEMPLATE),
        "content": {"interface": "input-multiline"},
        "created_at": {"display": "datetime", "display_options": {"relative": True}},
    },
    "facts": {
        "content": {"interface": "input-multiline", "sort": 1},
        "user_id": {"sort": 2, "width": "half"},
        "source": {
            "sort": 3,
            "width": "half",
            "display": "labels",
            "display_options": {"choices": FACT_SOURCES},
        },
        "created_at": {"sort": 4, "width": "half", "display": "datetime"},
        "superseded_at": {"sort": 5, "width": "half", "display": "datetime"},
        "superseded_by": {"sort": 6, **_many_to_one("{{content}}")},
        "importance": {"sort": 7, "width": "half"},
        # The backend's search terms for the content; cleared when an edit changes the content.
        "lexemes": {"hidden": True},
    },
    "llm_usage": {
        "created_at": {"display": "datetime", "display_options": {"relative": True}},
    },
    "bot_users": {
        "user_id": {"sort": 1, "width": "half", "note": "The Telegram user id."},
        "blocked": {
            "sort": 2,
            "width": "half",
            "interface": "boolean",
            "display": "boolean",
            "note": "The backend answers 403 user_blocked; the bot tells the user once.",
        },
        "daily_token_limit": {
            "sort": 3,
            "width": "half",
            "note": "Tokens a day. Empty: USER_DAILY_TOKEN_LIMIT applies; 0: no limit.",
            # The database's CHECK would refuse it too, but Directus reports that as a 500.
            "validation": {
                "_or": [
                    {"daily_token_limit": {"_null": True}},
                    {"daily_token_limit": {"_gte": 0}},
                ]
            },
            "validation_message": "The limit is empty (the default), 0 (none) or positive.",
        },
        "note": {"sort": 4, "interface": "input-multiline"},
        "created_at": {"sort": 5, "display": "datetime", "display_options": {"relative": True}},
    },
    "personas": {
        "name": {
            "sort": 1,
            "width": "half",
            "required": True,
            "note": "Shown to users on the /mode buttons.",
        },
        "is_default": {
            "sort": 2,
            "width": "half",
            "interface": "boolean",
            "display": "boolean",
            "note": "Answers chats that chose nothing. Ticking it here unticks the previous "
            "default; to change the default, tick another persona.",
            # Unticking would leave no default: the database refuses it, which Directus would
            # report as a 500. Ticking another persona is the way (its trigger unticks this one).
            "validation": {"_and": [{"is_default": {"_neq": False}}]},
            "validation_message": "One persona is always the default: tick Is Default on "
            "another persona instead.",
        },
        "instruction": {
            "sort": 3,
            "interface": "input-multiline",
            "required": True,
            "note": "The system prompt: the first part of the system message.",
        },
        "model": {
            "sort": 4,
            "width": "half",
            "note": "Empty: the configured chat model (OPENROUTER_MODEL).",
        },
        "temperature": {
            "sort": 5,
            "width": "half",
            "note": "Empty: LLM_TEMPERATURE.",
            # The database's CHECK would refuse it too, but Directus reports that as a 500.
            "validation": {
                "_or": [
                    {"temperature": {"_null": True}},
                    {"_and": [{"temperature": {"_gte": 0}}, {"temperature": {"_lte": 2}}]},
                ]
            },
            "validation_message": "The temperature is empty (the default) or from 0 to 2.",
        },
        "selectable": {
            "sort": 6,
            "width": "half",
            "interface": "boolean",
            "display": "boolean",
            "note": "Offered to users by /mode.",
        },
        "created_at": {"sort": 7, "width": "half", "display": "datetime"},
        "updated_at": {"sort": 8, "width": "half", "display": "datetime"},
        "id": {"sort": 20},
    },
    "chat_settings": {
        "persona_id": _many_to_one("{{name}}"),
        "updated_at": {"display": "datetime", "display_options": {"relative": True}},
    },
    "job_failures": {
        "error": {"interface": "input-multiline"},
        "arguments": {"interface": "input-multiline"},
        "failed_at": {"display": "datetime", "display_options": {"relative": True}},
    },
}


@dataclass(frozen=True)
class Relation:
    """A many-to-one over an existing foreign key, with the reverse (o2m) alias on the parent."""

    collection: str
    field: str
    related: str
    alias: str | None = None
    alias_template: str = ""
    alias_sort: int | None = None


RELATIONS = (
    Relation("messages", "session_id", "chat_sessions", "messages", MESSAGE_TEMPLATE, 10),
    Relation(
        "conversation_summaries",
        "session_id",
        "chat_sessions",
        "summaries",
        "v{{version}}: {{content}}",
        11,
    ),
    Relation("embeddings", "session_id", "chat_sessions", "memories", MESSAGE_TEMPLATE, 12),
    Relation("embeddings", "message_id", "messages"),
    # A fact's history: the versions it replaced (their `superseded_by` points at it).
    Relation("facts", "superseded_by", "facts", "earlier_versions", "{{content}}", 20),
    Relation("chat_settings", "persona_id", "personas"),
)

# The table view's default columns; sorted newest first.
LIST_COLUMNS: dict[str, list[str]] = {
    "chat_sessions": [
        "user_id",
        "chat_id",
        "is_active",
        "messages_since_summary",
        "created_at",
        "closed_at",
    ],
    "messages": ["role", "content", "input_mode", "session_id", "tokens", "created_at"],
    "conversation_summaries": ["session_id", "version", "content", "last_message_id", "created_at"],
    "embeddings": ["role", "content", "importance", "session_id", "created_at"],
    # Current and superseded facts side by side: history is visible, newest first.
    "facts": ["user_id", "content", "source", "created_at", "superseded_at", "superseded_by"],
    "llm_usage": [
        "created_at",
        "user_id",
        "purpose",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "audio_seconds",
    ],
    "bot_users": ["user_id", "blocked", "daily_token_limit", "note", "created_at"],
    "personas": ["name", "is_default", "selectable", "model", "temperature", "updated_at"],
    "chat_settings": ["chat_id", "persona_id", "updated_at"],
    "job_failures": ["failed_at", "task", "error", "attempts", "arguments"],
    "usage_daily": ["day", "model", "purpose", "calls", "total_tokens", "cost"],
    "rag_outbox": ["message_id", "attempts", "next_attempt_at", "last_error", "enqueued_at"],
}
# Tables without created_at whose default view is sorted by another column, newest first.
SORT_BY: dict[str, str] = {
    "job_failures": "-failed_at",
    "usage_daily": "-day",
    "chat_settings": "-updated_at",
    "rag_outbox": "-enqueued_at",
}

EDITABLE_BY_OPERATOR = ("messages", "chat_sessions", "facts", "bot_users", "personas")
# Operators may also add a row: limit or block a user before their first message; a persona.
CREATABLE_BY_OPERATOR = ("bot_users", "personas")


@dataclass(frozen=True)
class Access:
    role_id: str
    policy_id: str
    name: str
    icon: str
    description: str


OPERATOR = Access(
    OPERATOR_ROLE_ID,
    OPERATOR_POLICY_ID,
    "Operator",
    "support_agent",
    "Reads all dialogue data, usage and the dashboard; fixes or deletes messages, sessions and "
    "facts; sets users' daily limits and bans; edits personas.",
)
VIEWER = Access(
    VIEWER_ROLE_ID,
    VIEWER_POLICY_ID,
    "Viewer",
    "visibility",
    "Read-only access to dialogue data, usage, personas and the dashboard.",
)

# Who may write what beyond the policies' collection rights. Directus 12 without a license
# refuses item rules in permissions ("custom permission rules"), and its built-in app rules let
# any app user create a preset without `user`, i.e. a shared one (a role's or everyone's default
# view). A blocking flow on the preset and comment events holds non-admins to these rules;
# each check is a "condition" operation whose failure cancels the request with a 400 that
# names the field.
GUARD_FLOW_ID = "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0010"
GUARD_FLOW = {
    "name": "Guard: personal presets, no mentions",
    "icon": "shield",
    "description": "Non-admins create only their own presets and bookmarks; Viewers do not "
    "comment and Operators' comments mention nobody. Provisioned; edits are overwritten.",
    "status": "active",
    "trigger": "event",
    "accountability": None,
    "options": {
        "type": "filter",
        "scope": ["items.create", "items.update"],
        "collections": ["directus_presets", "directus_comments"],
    },
}


@dataclass(frozen=True)
class Check:
    """One operation of the guard flow: a condition, then where each outcome leads."""

    key: str
    id: str
    type: str
    options: dict[str, Any]
    resolve: str | None = None  # key of the next check; None ends the flow, request allowed
    reject: str | None = None  # None ends the flow rejected: the request fails


GUARD_CHECKS = (
    Check(
        "admin_or_system",
        "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0011",
        "condition",
        {
            "filter": {
                "_or": [
                    {"$accountability": {"admin": {"_eq": True}}},
                    {"$accountability": {"_null": True}},
                ]
            }
        },
        resolve=None,
        reject="new_preset",
    ),
    Check(
        "new_preset",
        "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0012",
        "condition",
        {"filter": {"$trigger": {"event": {"_eq": "presets.create"}}}},
        resolve="own_preset",
        reject="comment",
    ),
    # Directus's own rules already keep a preset update to the user's own presets.
    Check(
        "own_preset",
        "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0013",
        "condition",
        {"filter": {"$trigger": {"payload": {"user": {"_eq": "$CURRENT_USER"}}}}},
    ),
    Check(
        "comment",
        "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0014",
        "condition",
        {"filter": {"$trigger": {"event": {"_in": ["comments.create", "comments.update"]}}}},
        resolve="no_mention",
        reject="allowed",
    ),
    # A mention (`@<user id>`) notifies, and may e-mail, another user: an administrator's act.
    Check(
        "no_mention",
        "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0015",
        "condition",
        {
            "filter": {
                "_and": [
                    {"$accountability": {"role": {"_neq": VIEWER_ROLE_ID}}},
                    {"$trigger": {"payload": {"comment": {"_ncontains": "@"}}}},
                ]
            }
        },
    ),
    # Ends the flow on "resolve": a rejected condition as the last step would cancel the request.
    Check("allowed", "5b0e6f1a-1c3d-4e0b-9a51-0d0c0a7e0016", "transform", {"json": {}}),
)
