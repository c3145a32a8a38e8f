"""The asyncio shell: settings, mTLS transport, root tasks, the leader's controller, local API."""
