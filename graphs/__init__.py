"""The ingress (FastAPI on Serve), API schemas, error envelope, and typed app builders."""
