"""Database: models, engine and session factory, embedded PostgreSQL, migrations."""
