"""The coordinator: the public API, the rejection schedule, and the calls to the model services."""
