"""Inference: the 2D engine and post-processing, 3D stack and ortho-plane pipelines, and the
chunked driver for volumes of any size (see docs/design.md s.1)."""
