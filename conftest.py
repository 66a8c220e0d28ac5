"""Registers the requirement-test fixtures; the plugin itself is the `hybridtrust` pytest entry point."""

pytest_plugins = ("fixtures.subjects",)
