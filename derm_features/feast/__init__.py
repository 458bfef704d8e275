"""feast."""
