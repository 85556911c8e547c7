"""Built-in creators, registered on import: offline tasks and importers of users' data."""

from pandemonium.tasks.builtin import digits, importers, shapes  # noqa: F401
