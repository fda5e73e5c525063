"""The embedded toy world: a procedural world of shapes, and a tiny model family trained on it."""
