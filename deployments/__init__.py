"""Thin Ray Serve deployments around `models/`: batching, health checks, GPU defaults."""
