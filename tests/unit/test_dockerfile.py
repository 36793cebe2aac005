"""The Docker image installs exactly what the package declares, and nothing bakes secrets in."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_docker_requirements_equal_the_package_dependencies():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    installed = requirement_lines(REPO / "docker" / "requirements.txt")
    # torch comes with the CUDA base image; everything else must match line for line.
    assert sorted(installed) == sorted(d for d in declared if not d.startswith("torch"))
    base = re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:(\d+)\.(\d+)", (REPO / "Dockerfile").read_text(), re.M)
    torch_spec = next(d for d in declared if d.startswith("torch"))
    low, high = re.findall(r"(\d+)\.(\d+)", torch_spec)[:2]
    assert tuple(map(int, low)) <= tuple(map(int, base.groups())) < tuple(map(int, high)), "base image torch out of range"


def test_dockerfile_installs_those_files_runs_as_non_root_and_holds_no_token():
    text = (REPO / "Dockerfile").read_text()
    assert "-r docker/requirements.txt" in text and "-r docker/flash-attn.txt" in text
    assert re.search(r"^USER (?!root|0)", text, re.M)
    assert 'ENTRYPOINT ["tuner"]' in text
    assert not re.search(r"HF_TOKEN|HUGGING_FACE_HUB_TOKEN|WANDB_API_KEY", text)
