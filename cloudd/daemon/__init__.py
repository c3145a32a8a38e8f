"""The agent (`cloudd`): a thin asyncio shell around the pure cores, in rooms. `main` starts
it; `operator` serves the local API; `member` holds one cloud's membership and routes every
message through the dispatch table; `leader`, `host` and `node` perform the duties of the
acting leader, a pool host and a node; `network` carries messages between agents; `base`
holds the runner, sd_notify, the event log and the clock. docs/architecture.md draws it."""
