"""Asset and record stores behind small interfaces (local disk + SQLite by default)."""
