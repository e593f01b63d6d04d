"""The UNet's fixed geometry, shared by the data pipeline, the model and inference (a leaf: no imports).

Valid 3x3 convolutions shrink a 572x572 input to a 388x388 output (the U-Net
paper's tile): the data pipeline pads or crops to these sizes, the model is
built for them, and overlap-tile inference steps by the output size.
"""

INPUT_SIZE = 572
OUTPUT_SIZE = 388
NUM_CLASSES = 2  # the recipe's: cell membrane and cell (--num_classes changes it)
