"""Shared fixtures. Tests that need the real KiTS19 label maps use `kits19_dir` and skip when absent."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def find_kits19_dir() -> Path | None:
    """$KITS19_DIR, else ../shared/kits19 beside the repo; None when neither holds kits.json."""
    for candidate in (os.environ.get("KITS19_DIR"), ROOT.parent / "shared" / "kits19"):
        if candidate and (Path(candidate) / "kits.json").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def kits19_dir() -> Path:
    path = find_kits19_dir()
    if path is None:
        pytest.skip("real KiTS19 label maps not found ($KITS19_DIR or ../shared/kits19)")
    return path
