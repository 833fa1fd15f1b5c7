"""Checks of the .proto contracts with buf: style (`buf lint`) and compatibility of the public API
with its committed image (`buf breaking`), which a change must not break.

    python -m protos.contract lint
    python -m protos.contract breaking
    python -m protos.contract update-public-api   # after a deliberate, released change of the API

buf comes from the npm registry, pinned in bin/test, into .tools/."""
import pathlib
import shutil
import subprocess
import sys

from protos.compile import PROTO_ROOT, REPOSITORY_ROOT

PUBLIC_API = ("specrej/v1/coordinator.proto", "specrej/v1/common.proto")
PUBLIC_API_IMAGE = PROTO_ROOT / "public-api.binpb"
LOCAL_BUF = REPOSITORY_ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def buf_executable() -> str | None:
    """bin/test's pinned buf, else one on PATH."""
    return str(LOCAL_BUF) if LOCAL_BUF.exists() else shutil.which("buf")


def _buf(*args: str, proto_root: pathlib.Path) -> subprocess.CompletedProcess:
    executable = buf_executable()
    if executable is None:
        raise FileNotFoundError("buf is not installed: bin/test installs it into .tools/")
    return subprocess.run([executable, *args], cwd=proto_root, capture_output=True, text=True)


def _public_api_paths() -> list[str]:
    return [argument for path in PUBLIC_API for argument in ("--path", path)]


def lint(proto_root: pathlib.Path = PROTO_ROOT) -> subprocess.CompletedProcess:
    return _buf("lint", proto_root=proto_root)


def breaking(proto_root: pathlib.Path = PROTO_ROOT,
             against: pathlib.Path = PUBLIC_API_IMAGE) -> subprocess.CompletedProcess:
    """The public API under `proto_root` against the committed contract; exit status 0 = compatible."""
    return _buf("breaking", "--against", str(against), *_public_api_paths(), proto_root=proto_root)


def update_public_api(proto_root: pathlib.Path = PROTO_ROOT) -> subprocess.CompletedProcess:
    return _buf("build", *_public_api_paths(), "--exclude-source-info", "-o", str(PUBLIC_API_IMAGE),
                proto_root=proto_root)


def main(argv: list[str]) -> int:
    commands = {"lint": lint, "breaking": breaking, "update-public-api": update_public_api}
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: python -m protos.contract {{{'|'.join(commands)}}}", file=sys.stderr)
        return 2
    result = commands[argv[0]]()
    print(result.stdout + result.stderr, end="")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
