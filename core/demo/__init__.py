"""The product demo: the four methods on four small public-domain / CC0 photos (see photos/NOTICE)."""
