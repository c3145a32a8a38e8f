"""The `web` cloud type."""
