"""The lowest floor, beside `telemetry`: small pieces every layer may import (errors that
carry the request field they are about, a depth-limited JSON loader, the torchvision import
shim that `models/` and `router/` share). Imports nothing of ours.
"""
