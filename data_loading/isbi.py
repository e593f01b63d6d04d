"""What the ISBI 2012 files are: names, shapes, and the SHA-256 of their decoded pixels.

Pixel hashes (of the 30x512x512 uint8 array in C order), not file hashes: a
mirror may compress or re-tag a file and still hold the very same pixels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import tifffile

SHAPE = (30, 512, 512)
PIXEL_SHA256 = {
    "train-volume.tif": "200da3d452d726e6c9ca1ce04b869d4edb727320d23b516d01cce707dc8c4760",
    "train-labels.tif": "a7cb64000a1a7e542682927e19c91339f58f9f178e0bcce4e207371116f0ca36",
    "test-volume.tif": "1b58fa7ec1d0ff9d39a855622db3ff66a97863036339b0d04be51b2f5a99b0e9",
}
CHALLENGE_URL = "http://brainiac2.mit.edu/isbi_challenge/sites/default/files/"


def pixel_sha256(stack: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(stack).tobytes()).hexdigest()


def verification_problem(path: Path, name: str) -> str | None:
    """Why ``path`` is not a faithful copy of the ISBI file ``name``; None when it is."""
    try:
        stack = tifffile.imread(path)
    except Exception as error:  # any decoding failure means "not this file"
        return f"not a readable TIFF ({error})"
    if stack.shape != SHAPE or stack.dtype != np.uint8:
        return f"decodes to {stack.shape} {stack.dtype}, expected {SHAPE} uint8"
    if pixel_sha256(stack) != PIXEL_SHA256[name]:
        return "pixel SHA-256 does not match the published data"
    return None
