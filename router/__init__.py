"""Intent routing, parameter extraction and prompt handling (pure Python, no Ray)."""
