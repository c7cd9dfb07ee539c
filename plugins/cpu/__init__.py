"""The cpu backend plugin."""
