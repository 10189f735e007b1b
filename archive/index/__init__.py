"""The SQL index of the archive (SQLite embedded, PostgreSQL when it grows)."""
