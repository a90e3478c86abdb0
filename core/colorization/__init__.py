"""Semantic-driven colorization (Ho et al.): palette, user maps, full-resolution pipeline."""
