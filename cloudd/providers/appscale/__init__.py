"""The `appscale` cloud type."""
