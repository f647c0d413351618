"""The demo detector's test image, without TensorFlow (tests import it to feed ONNX models)."""

import numpy as np


def sample_image(height=256, width=256, seed=0):
    """uint8 [1, H, W, 3]: flat gray with a few colored rectangles. The untrained demo scores
    edges and corners, so this gives tens of detections over several classes (a flat image
    gives none). _calibrate() tunes the heads on it."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 110, np.uint8)
    for _ in range(6):
        y0, x0 = rng.integers(0, height - 16), rng.integers(0, width - 16)
        img[y0:y0 + rng.integers(16, height // 2), x0:x0 + rng.integers(16, width // 2)] = \
            rng.integers(0, 256, 3)
    return img[None]
