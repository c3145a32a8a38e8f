"""The base every room stands on: the runner of named root tasks, sd_notify, the event log,
the one clock and the one durable write. Nothing here knows about clouds, members or
messages; everything above may use it."""
