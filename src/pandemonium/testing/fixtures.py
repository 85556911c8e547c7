"""pytest fixtures for pandemonium and its plugins (registered via the pytest11 entry point)."""
