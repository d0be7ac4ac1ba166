"""Across-layer analyses: probes, layer similarity, importance, logit lens, pictures of layers."""
