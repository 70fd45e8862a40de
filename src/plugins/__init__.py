"""corral.plugins: every capability, one module per plugin."""
