"""What `cloudd-cli` needs to talk to a running agent, and nothing of the agent itself.

The command line never imports `cloudd.daemon`: it speaks the local API through `api`
(the client, its errors and the JSON-lines framing both ends share), decodes the `inspect`
document with `inspectdoc` and prints it with `render`. The agent builds on the same
modules from above (its API server frames answers with `api`, its inspect view fills
`inspectdoc`'s dataclasses), so the two ends cannot drift apart.
"""
