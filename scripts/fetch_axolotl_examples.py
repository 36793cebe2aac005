"""Copy every YAML under Axolotl's examples/ at a pinned commit into tests/fixtures/axolotl_examples/.

The compatibility tests (tests/unit/test_axolotl_examples.py) read these committed copies and
never the network. Run once, by hand, to refresh them:

    git clone https://github.com/axolotl-ai-cloud/axolotl /tmp/axolotl
    python scripts/fetch_axolotl_examples.py /tmp/axolotl [COMMIT]

COMMIT defaults to the pinned one below; the files land under
tests/fixtures/axolotl_examples/<path below examples/>, with SOURCE naming the repository and
commit they came from. Files are taken with `git show COMMIT:PATH`, so the work tree's state
does not matter (a bare clone works too).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPOSITORY = "https://github.com/axolotl-ai-cloud/axolotl"
PINNED = "067b021c8b87a9e5e380b9173c704cf7340e30f5"  # 2026-07-24, the commit issue 15 measured
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "axolotl_examples"


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def main(repo: str, commit: str = PINNED) -> None:
    full = git(repo, "rev-parse", f"{commit}^{{commit}}").strip()
    date = git(repo, "log", "-1", "--format=%cI", full).strip()
    paths = [p for p in git(repo, "ls-tree", "-r", "--name-only", full, "examples").splitlines()
             if p.endswith((".yml", ".yaml"))]
    if OUT.exists():
        shutil.rmtree(OUT)
    for path in paths:
        target = OUT / Path(path).relative_to("examples")
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = subprocess.run(["git", "-C", repo, "show", f"{full}:{path}"], check=True, capture_output=True).stdout
        target.write_bytes(blob)
    (OUT / "SOURCE").write_text(
        f"repository: {REPOSITORY}\ncommit: {full}\ndate: {date}\nfiles: {len(paths)} (every .yml/.yaml under examples/)\n"
        "made by: scripts/fetch_axolotl_examples.py\n",
        encoding="utf-8",
    )
    print(f"{len(paths)} files from {full[:9]} ({date}) -> {OUT}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
