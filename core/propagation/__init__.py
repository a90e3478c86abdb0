"""Edit propagation from strokes (DeepProp, Endo et al. 2016): strokes, superpixels, learning,
estimation, edge-aware post-processing and the applications built on them."""
