"""Providers (one per cloud type) and the service supervisor that runs their roles."""
