"""The `torque` cloud type."""
