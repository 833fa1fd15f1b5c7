"""Compile the .proto files into the importable Python package `specrej.v1`.

Run `python -m protos` from the repository root; the output is generated, never edited by hand.
"""
import sys

from protos.compile import REPOSITORY_ROOT, compile_protos

if __name__ == "__main__":
    sys.exit(compile_protos(REPOSITORY_ROOT))
