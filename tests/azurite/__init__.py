"""Azurite, the Table Storage emulator, as pytest fixtures (see plugin.py)."""
