"""The base every room stands on: the runner of named root tasks, sd_notify, the event log
and the one clock. Nothing here knows about clouds, members or messages; everything above
may use it. (The one durable write, `cloudd.durable`, sits below vmctl so that the host
agent's term file uses it too.)"""
