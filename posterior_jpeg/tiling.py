"""Sizes the generator and the sampler share, torch-free so that the command line can state and
check them before torch loads."""

PAD_MULTIPLE = 16  # a whole 4:2:0 MCU: trunk cells then line up with the file's 8x8 blocks
DEFAULT_TILE = 512  # sampler tile side in pixels
DEFAULT_OVERLAP = 32  # pixels shared by neighbouring tiles, blended
