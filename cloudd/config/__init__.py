"""Files operators write: manifests (`kind: Cloud`) and agent settings (`kind: Agent`)."""
