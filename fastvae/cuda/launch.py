"""The launch geometry of the CUDA C, defined once: the gpu backend launches with these values and the kernels
receive them as generated #defines (fastvae.cuda.sources.defines), so the two cannot disagree.
"""

TILE_T = 16                 # threads per side of a product kernel's block (TILE_T x TILE_T)
TILE_R = 2                  # outputs per thread per side
TILE_MN = TILE_T * TILE_R   # outputs per side of a block's tile: at batch 150 a 500-wide layer is 80 blocks
TILE_K = 16                 # depth of one shared-memory stage of a product
THREADS = TILE_T * TILE_T   # threads of every block (256): block_sum_add reduces over exactly this many
ADAM_BLOCKS = 2048          # adam_update is a grid-stride loop: enough blocks to fill a GPU, fewer for a small buffer

# The names above, as the CUDA C sees them.
GEOMETRY = ("TILE_T", "TILE_R", "TILE_MN", "TILE_K", "THREADS", "ADAM_BLOCKS")
