"""buf on the .proto contracts: the style check passes, the public API is compatible with its
committed image (protos/public-api.binpb), and the check does catch a breaking change."""
import re
import shutil

import pytest

from protos import contract


@pytest.fixture
def proto_copy(tmp_path, buf):
    """A copy of protos/ (buf.yaml and the .proto files) to change."""
    copy = tmp_path / "protos"
    shutil.copytree(contract.PROTO_ROOT, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__", "*.binpb"))
    return copy


def edit_request(proto_root, old: str, new: str) -> None:
    path = proto_root / "specrej/v1/coordinator.proto"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_lint_passes(buf):
    result = contract.lint()
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api_is_compatible_with_the_committed_contract(buf):
    result = contract.breaking()
    assert result.returncode == 0, result.stdout + result.stderr


def test_renumbered_field_is_caught(proto_copy):
    edit_request(proto_copy, "uint32 max_new_tokens = 6;", "uint32 max_new_tokens = 60;")
    result = contract.breaking(proto_copy)
    assert result.returncode != 0
    assert re.search(r'Previously present field "6" with name "max_new_tokens".*deleted', result.stdout)


def test_renamed_enum_value_is_caught(proto_copy):
    edit_request(proto_copy, "BEST_OF_N = 1;", "METHOD_BEST_OF_N = 1;")
    result = contract.breaking(proto_copy)
    assert result.returncode != 0 and "BEST_OF_N" in result.stdout


def test_added_field_is_compatible(proto_copy):
    edit_request(proto_copy, "repeated uint32 decision_points = 13;",
                 "repeated uint32 decision_points = 13;\n  // A new, optional setting.\n  bool echo_prompt = 99;")
    result = contract.breaking(proto_copy)
    assert result.returncode == 0, result.stdout + result.stderr
