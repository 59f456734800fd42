"""A write that fails part-way (a full disk, a quota, a file size limit) leaves the previous file
intact, removes its temporary and says one line naming the path and the error.

Two ways of failing after N bytes: a writer that raises ENOSPC after writing N bytes (in-process),
and the real writers in a child process whose file size limit is N bytes (RLIMIT_FSIZE: the
kernel refuses the write that would pass N with EFBIG, as it refuses one past a full disk)."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.atomic import atomic_write
from data.errors import CaseError, WriteError
from tests.kits_fixtures import write_tiny_cohort

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
LIMITS = (0, 100, 5000)   # bytes a write may reach before the disk is "full"


@pytest.mark.parametrize("after", LIMITS)
def test_enospc_after_n_bytes_keeps_the_previous_file(tmp_path, after):
    target = tmp_path / "table.csv"
    target.write_text("the previous results\n")

    def full_disk(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"x" * after)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(WriteError) as err:
        atomic_write(target, full_disk)
    assert str(err.value) == f"{target}: not written (No space left on device); the previous file, if any, is unchanged"
    assert target.read_text() == "the previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]      # no temporary left
    assert isinstance(err.value, CaseError)                                  # batch work lists it by name


WRITERS = {
    "text": "from data.atomic import write_text; write_text(P, 'new text ' * 2000)",
    "csv": "import pandas as pd; from data.atomic import write_csv; write_csv(pd.DataFrame({'a': range(3000)}), P)",
    "cache array": "import numpy as np; from data.preprocessing import _save_npy; _save_npy(P, np.ones((40, 40, 40), np.float32))",
    "prediction": ("import numpy as np; from data.nifti import write_volume, kits_affine; "
                   "write_volume(P, np.random.default_rng(0).integers(0, 3, (30, 60, 60)).astype(np.uint8), kits_affine((3, 1, 1)))"),
    "checkpoint": "import torch; from models.checkpoint import save_checkpoint; save_checkpoint(P, {'w': torch.randn(20000)})",
}
SUFFIX = {"text": ".md", "csv": ".csv", "cache array": ".npy", "prediction": ".nii.gz", "checkpoint": ".pt"}


def limited(code: str, limit: int) -> subprocess.CompletedProcess:
    """Run code in a child whose files may not grow past `limit` bytes."""
    prelude = ("import resource, signal\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"     # the write fails with EFBIG instead of a kill
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n")
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_fails_cleanly_at_a_file_size_limit(tmp_path, writer):
    target = tmp_path / f"result{SUFFIX[writer]}"
    for limit in LIMITS:
        target.write_bytes(b"previous")
        code = (f"P = {str(target)!r}\nfrom data.errors import WriteError\n"
                f"try:\n    {WRITERS[writer]}\nexcept WriteError as e:\n    print('ERR', e)\n")
        out = limited(code, limit)
        assert out.returncode == 0, out.stderr
        line = out.stdout.strip()
        assert line.startswith(f"ERR {target}: not written (") and line.endswith("); the previous file, if any, "
                                                                                 "is unchanged"), (writer, limit, line, out.stderr)
        assert "File too large" in line or "file size limit" in line, line
        assert target.read_bytes() == b"previous", (writer, limit)
        assert [p.name for p in tmp_path.iterdir()] == [target.name], (writer, limit)   # temporary removed


def test_preprocessing_lists_the_cases_a_full_disk_stopped_and_the_rerun_finishes(tmp_path):
    raw = write_tiny_cohort(tmp_path / "raw", n_cases=2)
    cache = tmp_path / "cache"
    cmd = f"import sys, runpy; sys.argv = ['preprocess.py', 'run', '--raw', {str(raw)!r}, '--out', {str(cache)!r}, '--no-progress']\n" \
          "runpy.run_path('preprocess.py', run_name='__main__')\n"
    out = limited(cmd, 2000)                                   # the settings file fits, the first array does not
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "not written (" in out.stderr and f"{cache}/case_00000.npy" in out.stderr
    assert not list(cache.glob(".*.tmp*")) and not list(cache.glob("case_*.npy"))
    ok = subprocess.run([sys.executable, "preprocess.py", "run", "--raw", str(raw), "--out", str(cache), "--no-progress"],
                        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr                       # room again: the same command finishes
    assert json.loads((cache / "splits.json").read_text())
