"""Inference: the 2D engine, panoptic post-processing and (later) 3D drivers."""
