"""Makes the running interpreter's venv hold exactly the given lock files (`make` runs it).

pip has no sync: `pip install --require-hashes --no-deps -r LOCK` puts every locked version in
place (hash-checked, nothing resolved at install time), then every other distribution is
removed, except pip and the project itself (installed next, editable, by the Makefile). So a
package dropped from the lock leaves the venv too, and no test passes on a package that the
lock, and so the image, does not have.

    .venv/bin/python scripts/sync-venv.py requirements/dev.txt
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(locks: list[str]) -> None:
    pip = [sys.executable, "-m", "pip"]
    reqs = [arg for lock in locks for arg in ("--requirement", lock)]
    subprocess.run([*pip, "install", "--quiet", "--require-hashes", "--no-deps", *reqs], check=True)
    locked = {
        normalize(m.group(1))
        for lock in locks
        for line in Path(lock).read_text().splitlines()
        if (m := PIN.match(line))
    }
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]["name"]
    keep = locked | {"pip", normalize(project)}
    installed = {
        normalize(d.metadata["Name"]) for d in metadata.distributions() if d.metadata["Name"]
    }
    extra = sorted(installed - keep)
    if extra:
        print(f"sync-venv: removing what the lock does not hold: {' '.join(extra)}")
        subprocess.run([*pip, "uninstall", "--quiet", "--yes", *extra], check=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
