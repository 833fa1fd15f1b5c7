"""Compile the .proto files into the importable Python package `specrej.v1`.

Run `python -m protos` from the repository root; the output is generated, never edited by hand.
"""
import pathlib
import sys

from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
OUTPUT_ROOT = PROTO_ROOT.parent


def main() -> int:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("specrej/v1/*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={OUTPUT_ROOT}",
            f"--pyi_out={OUTPUT_ROOT}",
            f"--grpc_python_out={OUTPUT_ROOT}",
            *sources,
        ]
    )
    if status == 0:
        for package in (OUTPUT_ROOT / "specrej", OUTPUT_ROOT / "specrej" / "v1"):
            (package / "__init__.py").touch()
    return status


if __name__ == "__main__":
    sys.exit(main())
