"""The Docker image installs the versions the test suite ran with (constraints.txt), the package
declares, and nothing bakes secrets in. Each test fails when the files drift apart."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
# In docker/flash-attn.txt only: never installed by the tests, so constraints.txt cannot pin them.
NOT_IN_CONSTRAINTS = {"flash-attn", "einops"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def constraints() -> dict[str, str]:
    pins = {}
    for line in requirement_lines(REPO / "constraints.txt"):
        name, _, version = line.partition("==")
        pins[norm(name)] = version
    return pins


def exact_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in requirement_lines(path):
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{path.name}: {line!r} is not one exact pin"
        pins[norm(req.name)] = spec[0].version
    return pins


def declared() -> dict[str, Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {norm(r.name): r for r in map(Requirement, deps)}


def arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert match, f"Dockerfile has no `ARG {name}=...`"
    return match.group(1)


def test_docker_requirements_are_the_package_dependencies_at_the_tested_versions():
    pins, tested, deps = exact_pins(REPO / "docker" / "requirements.txt"), constraints(), declared()
    # Every runtime dependency but torch (installed in its own step), and nothing else.
    assert sorted(pins) == sorted(name for name in deps if name != "torch")
    for name, version in pins.items():
        assert version == tested[name], f"docker/requirements.txt {name}=={version}, constraints.txt {tested[name]}"
        assert deps[name].specifier.contains(version), f"{name}=={version} is outside pyproject's {deps[name]}"


def test_torch_is_the_tested_version_inside_the_declared_range():
    version, tested, deps = arg("TORCH_VERSION"), constraints(), declared()
    assert version == tested["torch"], f"Dockerfile torch {version}, constraints.txt {tested['torch']}"
    assert deps["torch"].specifier.contains(version)
    assert '"torch==${TORCH_VERSION}"' in DOCKERFILE


def test_every_pip_install_runs_under_the_constraints():
    assert "COPY constraints.txt" in DOCKERFILE
    installs = re.findall(r"pip install[^\n&]*(?:\\\n[^\n&]*)*", DOCKERFILE)
    assert installs
    for cmd in installs:
        if "--no-deps ./" in cmd:  # tuner itself: its dependencies are already installed
            continue
        assert "-c docker/constraints.txt" in cmd, f"pip install without the constraints: {cmd!r}"
    assert "-r docker/requirements.txt" in DOCKERFILE and "-r docker/flash-attn.txt" in DOCKERFILE


def test_optional_flash_attention_is_pinned_exactly():
    pins, tested = exact_pins(REPO / "docker" / "flash-attn.txt"), constraints()
    assert "flash-attn" in pins
    for name, version in pins.items():
        if name in NOT_IN_CONSTRAINTS:
            assert name not in tested, f"{name} is in constraints.txt now: drop it from NOT_IN_CONSTRAINTS"
        else:
            assert version == tested[name], f"docker/flash-attn.txt {name}=={version}, constraints.txt {tested[name]}"


def test_base_image_python_is_the_one_the_tests_run_on():
    base = arg("BASE_IMAGE")
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+", base)
    assert match, f"BASE_IMAGE {base!r}: expected an exact python:X.Y.Z-slim-<debian> tag"
    assert tuple(map(int, match.groups()[:2])) == sys.version_info[:2], (base, sys.version)


def test_dockerfile_runs_as_non_root_and_holds_no_token():
    assert re.search(r"^USER (?!root|0)", DOCKERFILE, re.MULTILINE)
    assert 'ENTRYPOINT ["tuner"]' in DOCKERFILE
    assert not re.search(r"HF_TOKEN|HUGGING_FACE_HUB_TOKEN|WANDB_API_KEY", DOCKERFILE)
