"""Makes tests/ importable so test packages share tooling.py."""
