"""Tiled training on large boards (`data.tile`): each image cut into overlapping windows in the index."""
