"""Build steps pyproject.toml cannot declare: the gRPC code is compiled from protos/ into the build
(the same code as `python -m protos`), and the dependency pins are read from requirements.txt."""
import pathlib
import re
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from protos.compile import compile_protos  # noqa: E402  (the source tree's own module, found through ROOT)

# A client-only install stays light; the services' own needs come with the `serve` extra.
CLIENT_REQUIREMENTS = ("grpcio", "protobuf", "grpcio-status", "googleapis-common-protos")
SERVE_REQUIREMENTS = ("torch", "transformers", "accelerate", "gguf", "safetensors", "numpy", "grpcio-health-checking",
                      "grpcio-reflection", "prometheus-client", "cryptography", "nvidia-ml-py")


def pinned(names: tuple[str, ...]) -> list[str]:
    """requirements.txt's lines for these distributions."""
    lines = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            lines[re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()] = requirement
    return [lines[name] for name in names]


class BuildPyWithProtos(build_py):
    """build_py, then the generated specrej.v1 next to the built packages (next to the sources for
    an editable install, which imports from the source tree)."""

    def run(self):
        super().run()
        output_root = ROOT if self.editable_mode else pathlib.Path(self.build_lib)
        if compile_protos(output_root) != 0:
            raise SystemExit("protoc could not compile protos/specrej/v1/*.proto")


setup(
    install_requires=pinned(CLIENT_REQUIREMENTS),
    extras_require={"serve": pinned(SERVE_REQUIREMENTS)},
    cmdclass={"build_py": BuildPyWithProtos},
)
