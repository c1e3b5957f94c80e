"""Ways in: each transport is a thin adapter around a Session."""
