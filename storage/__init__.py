"""Asset and record stores behind small interfaces: local disk + SQLite by default; S3 (AWS,
MinIO, R2), Supabase Storage and Postgres for clusters; Alembic migrations; retention."""
