"""Compile the .proto files of package specrej.v1 into Python modules under a chosen root.

`python -m protos` writes them next to the sources (the repository root); the package build
(setup.py) writes them into the build folder, so an installed `specrej` carries its own stubs."""
import pathlib

from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
REPOSITORY_ROOT = PROTO_ROOT.parent
PACKAGE_PATH = pathlib.Path("specrej", "v1")


def proto_sources() -> list[str]:
    """The .proto files, relative to PROTO_ROOT (the import root they are written against)."""
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_PATH).glob("*.proto"))


def compile_protos(output_root: pathlib.Path) -> int:
    """Write specrej/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py under `output_root`; protoc's exit status."""
    output_root = pathlib.Path(output_root)
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={output_root}",
            f"--pyi_out={output_root}",
            f"--grpc_python_out={output_root}",
            *proto_sources(),
        ]
    )
    if status == 0:
        # specrej/__init__.py is source (the client) where it exists; an image that copies only
        # protos/ still needs both folders to be packages.
        for package in (output_root / PACKAGE_PATH.parent, output_root / PACKAGE_PATH):
            init = package / "__init__.py"
            if not init.exists():
                init.touch()
    return status
