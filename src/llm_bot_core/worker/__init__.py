"""Celery app and tasks: summaries (and indexing) off the request path."""
