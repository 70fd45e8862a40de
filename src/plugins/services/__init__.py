"""Service plugins: thin local services over the plugins that hold the logic."""
