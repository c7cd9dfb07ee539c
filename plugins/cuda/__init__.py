"""The cuda backend plugin."""
