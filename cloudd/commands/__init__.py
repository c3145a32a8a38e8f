"""`cloudd-cli` command groups, one module each (the top layer with cloudd.cli)."""
