"""The metal backend plugin."""
