"""The member: one agent's part in one cloud. `Clouds` holds the agent's transport and the
cloud whose manifest names this agent; `CloudMember` wires the election shell, the leader's
duties, the host's duties and the node side together; the dispatch table routes every
message that arrives to one handler and says who may send it. Decisions that need no I/O
(who gets which manifest, which senders a message accepts) live in pure modules here."""
