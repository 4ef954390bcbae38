"""Phases of the chunked 3D driver (:func:`..chunked.segment_volume`), one module each.

1. :mod:`.plan`: the blocks (core + halo) and the job every task carries.
2. :mod:`.segment`: each block segmented in memory by the stack or ortho pipeline.
3. :mod:`.link`: objects of neighbouring blocks linked where their padded blocks overlap.
4. :mod:`.resolve`: connected components of the links, size filters on whole objects, ids.
5. :mod:`.store`: the work files of each block and the output zarr (written last).
:mod:`.executor` runs the per-block tasks in the calling thread or on a dask.distributed cluster.
"""
