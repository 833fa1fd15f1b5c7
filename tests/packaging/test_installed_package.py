"""`pip install .` into a fresh virtual environment, then calls from that environment, through
specrej.Client and through the `specrej` console script, to the real services on loopback.

The install downloads grpcio, protobuf and the build tools from the package index (pip's cache
makes later runs quicker); the services' own dependencies (torch, ...) must not come with it."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "requirements.txt")
CONSOLE_SCRIPTS = ("specrej", "specrej-coordinator", "specrej-generator", "specrej-reward")

CALLER = """
import json, sys
import specrej

with specrej.Client(sys.argv[1], timeout=120) as client:
    response = client.generate("Describe a lighthouse.", n=4, max_new_tokens=12, seed=3, decision_every_tokens=4)
    events = list(client.stream("Describe a lighthouse.", n=4, max_new_tokens=12, seed=3, decision_every_tokens=4))
print(json.dumps({
    "specrej": specrej.__file__,
    "generate_best": response.best.text,
    "generate_rounds": len(response.stats.rounds),
    "stream": [event.WhichOneof("event") for event in events],
    "stream_best": events[-1].result.best.text,
    "torch_loaded": "torch" in sys.modules,
}))
"""


def copy_sources(destination: pathlib.Path) -> None:
    """What the build reads: its own files, protos/, and the packages pyproject.toml lists (without
    any specrej/v1 generated here, which the build must make itself)."""
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, destination / name)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]

    def ignored(folder: str, names: list[str]) -> list[str]:
        generated = ["v1"] if pathlib.Path(folder) == ROOT / "specrej" else []
        return [name for name in names if name == "__pycache__" or name.endswith(".pyc")] + generated

    for folder in ("protos", *packages):
        shutil.copytree(ROOT / folder, destination / folder, ignore=ignored)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> pathlib.Path:
    """A fresh virtual environment with the repository installed by `pip install .`; its bin folder."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    source.mkdir()
    copy_sources(source)
    subprocess.run([sys.executable, "-m", "venv", work / "venv"], check=True)
    bin_folder = work / "venv" / "bin"
    result = subprocess.run([bin_folder / "pip", "install", "--disable-pip-version-check", "--quiet", str(source)],
                            capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout + result.stderr
    return bin_folder


def clean_environment() -> dict:
    """No PYTHONPATH: the installed package, not the repository, must answer."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def test_installed_client_calls_the_real_services(installed, tiny_stack, tmp_path):
    result = subprocess.run([installed / "python", "-c", CALLER, tiny_stack.coordinator.address], cwd=tmp_path,
                            env=clean_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert pathlib.Path(answer["specrej"]).is_relative_to(installed.parent)
    assert answer["generate_best"] and answer["generate_rounds"] >= 1
    assert answer["stream"][-1] == "result" and answer["stream"].count("round") >= 1
    assert answer["stream_best"] == answer["generate_best"]
    assert answer["torch_loaded"] is False


def test_console_script_asks_the_real_services(installed, tiny_stack, tmp_path):
    result = subprocess.run(
        [installed / "specrej", "Describe a lighthouse.", "--target", tiny_stack.coordinator.address, "--n", "4",
         "--max-new-tokens", "12", "--decision-every", "4", "--seed", "3"],
        cwd=tmp_path, env=clean_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "decision point at token    4" in result.stdout and "#1 candidate" in result.stdout


def test_client_install_is_light_and_has_every_console_script(installed, tmp_path):
    probe = ("import importlib.util, json; print(json.dumps({name: importlib.util.find_spec(name) is not None "
             "for name in ('torch', 'transformers', 'specrej.v1.generator_pb2_grpc', 'specrej.v1.reward_pb2_grpc', "
             "'coordinator.__main__', 'generator_service.__main__', 'reward_service.__main__', 'common.flags')}))")
    result = subprocess.run([installed / "python", "-c", probe], cwd=tmp_path, env=clean_environment(),
                            capture_output=True, text=True, check=True)
    found = json.loads(result.stdout)
    assert found.pop("torch") is False and found.pop("transformers") is False
    assert all(found.values()), found
    assert all((installed / script).exists() for script in CONSOLE_SCRIPTS)
