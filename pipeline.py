#!/usr/bin/env python
"""trt-pipeline: `python pipeline.py recipes/effdet.yaml` builds a TensorRT plan from a recipe.

See README.md; `python pipeline.py --help` lists options and exit codes.
"""

import os
import sys

# TensorFlow's C++ logging is noise for a build tool; errors still surface through tf2onnx.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trtpipe.cli import entry  # noqa: E402

if __name__ == "__main__":
    entry()
