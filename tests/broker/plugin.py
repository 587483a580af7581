"""pytest fixtures (filled in by the fixture's author)."""
