"""Interrupted and faulty work: SIGKILL mid-preprocessing and mid-training, torn checkpoint writes,
non-finite losses. Whatever happens, nothing complete is lost and re-running finishes the job."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from data.preprocessing import PreprocessSettings, run_preprocessing
from models import checkpoint as checkpoint_module
from models.checkpoint import load_checkpoint
from tests.kits_fixtures import write_tiny_cohort
from tests.test_training import tiny_args

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def wait_for(predicate, proc, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def cache_files(cache: Path) -> dict:
    return {p.name: p for p in sorted(cache.iterdir()) if p.suffix in (".npy", ".json")
            and p.name not in ("preprocess.json", "splits.json", "source.json")}


def test_preprocessing_killed_midway_finishes_on_rerun_and_equals_an_uninterrupted_run(tmp_path):
    raw = write_tiny_cohort(tmp_path / "raw", n_cases=12, shape=(32, 120, 120), spacing=(4.0, 0.8, 0.8))
    run_preprocessing(raw, tmp_path / "straight", PreprocessSettings(), progress=False)
    cache = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "preprocess.py"), "run", "--raw", str(raw), "--out", str(cache), "--no-progress"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = wait_for(lambda: cache.is_dir() and any(cache.glob("case_*.json")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(cache.glob("case_*.json")))
    assert started and done_at_kill < 12, "the run finished before it could be killed"
    # every case that looks complete is complete: its arrays load
    for props in cache.glob("case_*.json"):
        case = props.stem
        np.load(cache / f"{case}.npy"), np.load(cache / f"{case}_seg.npy")
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"kept {done_at_kill} already done" in out.stdout
    assert not list(cache.glob(".*.tmp*"))  # the killed writer's temporaries are gone
    a, b = cache_files(tmp_path / "straight"), cache_files(cache)
    assert a.keys() == b.keys() and len(a) == 36
    for name in a:
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(a[name]), np.load(b[name]), err_msg=name)
        else:
            assert a[name].read_text() == b[name].read_text(), name


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    write_tiny_cohort(root / "raw", n_cases=8, shape=(24, 40, 48), spacing=(3.22, 1.62, 1.62))
    assert train.main(tiny_args(root, "straight", epochs=3)) == 0
    return root


def final_weights(run: Path) -> dict:
    return load_checkpoint(run / "last.pt")["model"]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def run_cli(*args):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return out


def test_training_killed_after_a_checkpoint_resumes_to_the_same_weights(cohort):
    # all three in subprocesses with one thread: float sums must not depend on the thread count
    run_cli(*tiny_args(cohort, "straight_cli", epochs=3))
    run = cohort / "runs" / "killed"
    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_args(cohort, "killed", epochs=3)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = wait_for(lambda: (run / "last.pt").is_file(), proc, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ok, "training ended before its first checkpoint"
    epoch_at_kill = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= epoch_at_kill < 3 and not (run / "eval" / "per_case.csv").exists()
    run_cli("--resume", str(run), "--no-progress")
    assert_same_weights(final_weights(cohort / "runs" / "straight_cli"), final_weights(run))


class Killed(BaseException):
    """Stands for SIGKILL inside a write: nothing after it runs, no handler catches it."""


def test_a_checkpoint_write_torn_by_a_kill_never_replaces_last_pt(cohort, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def torn_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second last.pt (epoch 2): half the bytes, then death
            real_save(obj, f, *args, **kwargs)
            f.flush()
            os.ftruncate(f.fileno(), f.tell() // 2)
            raise Killed()
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", torn_save)
    with pytest.raises(Killed):
        train.main(tiny_args(cohort, "torn", epochs=3, extra=["eval.every=100"]))
    monkeypatch.undo()
    run = cohort / "runs" / "torn"
    assert load_checkpoint(run / "last.pt")["epoch"] == 1   # the complete one from before the kill
    assert list(run.glob(".last.pt.tmp*"))                   # the torn write is only a temporary file
    assert train.main(["--resume", str(run), "--no-progress"]) == 0
    assert not list(run.glob(".last.pt.tmp*"))
    assert_same_weights(final_weights(cohort / "runs" / "straight"), final_weights(run))


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="last.pt: not a readable checkpoint"):
        load_checkpoint(bad)


def nan_on_steps(monkeypatch, steps):
    from models.losses import DeepSupervisionLoss
    real = DeepSupervisionLoss.per_sample_levels
    counter = {"step": 0}

    def levels(self, outputs, target, **kwargs):
        out = real(self, outputs, target, **kwargs)
        if steps == "all" or counter["step"] in steps:
            out = out * float("nan")
        counter["step"] += 1
        return out

    monkeypatch.setattr(DeepSupervisionLoss, "per_sample_levels", levels)


def test_a_non_finite_loss_skips_its_step_and_the_run_goes_on(cohort, monkeypatch, capsys):
    nan_on_steps(monkeypatch, {1})
    assert train.main(tiny_args(cohort, "one_nan", epochs=1)) == 0
    out = capsys.readouterr().out
    assert "step 1: non-finite loss (nan), step skipped" in out
    weights = final_weights(cohort / "runs" / "one_nan")
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_a_non_finite_gradient_skips_its_step_instead_of_poisoning_the_weights(cohort, monkeypatch, capsys):
    """A finite loss whose backward gives NaN (torch 2.13's CPU bf16 5x5x5 conv3d did): skipped."""
    real_clip = torch.nn.utils.clip_grad_norm_
    counter = {"step": 0}

    def nan_grads_on_step_1(params, *args, **kwargs):
        params = list(params)
        if counter["step"] == 1:
            params[0].grad.fill_(float("nan"))
        counter["step"] += 1
        return real_clip(params, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_grads_on_step_1)
    assert train.main(tiny_args(cohort, "nan_grad", epochs=1)) == 0
    assert "step 1: non-finite gradient (norm nan), step skipped" in capsys.readouterr().out
    weights = final_weights(cohort / "runs" / "nan_grad")
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_a_persistently_non_finite_loss_stops_the_run_with_a_clear_message(cohort, monkeypatch):
    nan_on_steps(monkeypatch, "all")
    with pytest.raises(train.TrainingStopped, match="3 consecutive steps with a non-finite loss or gradient: stopping"):
        train.main(tiny_args(cohort, "all_nan", epochs=2, extra=["train.max_nonfinite_steps=3"]))


def test_the_cli_reports_a_stopped_run_in_one_line(cohort):
    out = subprocess.run([sys.executable, "-c",
                          "import sys, runpy, torch\n"
                          "from models.losses import DeepSupervisionLoss as D\n"
                          "real = D.per_sample_levels\n"
                          "D.per_sample_levels = lambda self, o, t, **k: real(self, o, t, **k) * float('nan')\n"
                          f"sys.argv = ['train.py', *{tiny_args(cohort, 'cli_nan', epochs=1, extra=['train.max_nonfinite_steps=2'])!r}]\n"
                          "runpy.run_path('train.py', run_name='__main__')\n"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: 2 consecutive steps with a non-finite loss or gradient")
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM: one line on what is kept, exit 130 / 143, and SIGTERM saves the last epoch
# ---------------------------------------------------------------------------------------------
def signalled_run(cmd, sig, when):
    """Start cmd, send sig once a stdout line satisfies when(line); (returncode, stderr)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = False
    for line in proc.stdout:
        if when(line):
            proc.send_signal(sig)
            sent = True
            break
    _, err = proc.communicate(timeout=300)
    assert sent, "the command ended before the signal could be sent"
    return proc.returncode, err


def test_ctrl_c_and_sigterm_in_training_say_what_is_kept_and_sigterm_saves_the_epoch(cohort):
    sets = ["train.checkpoint_every=3", "train.log_every=1"]
    run_cli(*tiny_args(cohort, "straight8", epochs=8, extra=sets))

    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_args(cohort, "ctrl_c", epochs=8, extra=sets)]
    code, err = signalled_run(cmd, signal.SIGINT, lambda line: line.startswith("epoch 5/8"))
    run = cohort / "runs" / "ctrl_c"
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("interrupted (Ctrl-C) at epoch 5; last complete checkpoint")
    assert f"{run / 'last.pt'} (epoch 3); continue with: python train.py --resume {run}" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 3

    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_args(cohort, "sigterm", epochs=8, extra=sets)]
    code, err = signalled_run(cmd, signal.SIGTERM, lambda line: line.startswith("epoch 5/8"))
    run = cohort / "runs" / "sigterm"
    assert code == 143 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    saved = load_checkpoint(run / "last.pt")["epoch"]
    assert saved == 4 and f"wrote {run / 'last.pt'}, the state at the end of epoch 4" in err
    run_cli("--resume", str(run), "--no-progress")              # from the epoch boundary, exactly
    assert_same_weights(final_weights(cohort / "runs" / "straight8"), final_weights(run))


def test_sigterm_to_the_whole_process_group_with_loader_workers_still_saves_the_epoch(cohort):
    """scancel and a terminal's Ctrl-C signal every process of the job, DataLoader workers too: the
    workers leave it to the main process, which saves the boundary and says so in one line."""
    sets = ["train.checkpoint_every=3", "train.log_every=1", "train.workers=1"]
    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_args(cohort, "sigterm_group", epochs=8, extra=sets)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith("epoch 5/8"):
            os.killpg(proc.pid, signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=300)
    run = cohort / "runs" / "sigterm_group"
    assert proc.returncode == 143 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"wrote {run / 'last.pt'}, the state at the end of epoch 4" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 4


def test_a_finished_run_with_loader_workers_exits(cohort):
    """Shielded workers ignore the SIGTERM multiprocessing ends leftover children with at exit: a run
    that left them alive would wait for them forever after its last line. The loader is closed after
    training, so the run ends at once."""
    cmd = [sys.executable, str(ROOT / "train.py"),
           *tiny_args(cohort, "workers_exit", epochs=2, extra=["train.workers=1"])]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert (cohort / "runs" / "workers_exit" / "eval" / "per_case.csv").is_file()


def test_a_shielded_helper_left_alive_does_not_hold_the_exit(tmp_path):
    """The safety net: an entry point that never closed its helpers (an error, a reference kept
    alive) still exits; without `end_helpers` at exit it waits for the helper forever."""
    script = tmp_path / "left_alive.py"
    script.write_text(
        "import multiprocessing, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from engine.interrupts import install, shield_worker\n"
        "def helper():\n    shield_worker()\n    time.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    install()\n"
        "    p = multiprocessing.Process(target=helper, daemon=True)\n    p.start()\n"
        "    print(p.pid, flush=True)\n    sys.exit(2)\n")
    out = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    helper = int(out.stdout.split()[0])
    assert not Path(f"/proc/{helper}").exists() or "Z" in Path(f"/proc/{helper}/stat").read_text().split()[2]


def test_ctrl_c_in_preprocessing_with_workers_is_one_line_and_the_rerun_finishes(tmp_path):
    raw = write_tiny_cohort(tmp_path / "raw", n_cases=12, shape=(32, 120, 120), spacing=(4.0, 0.8, 0.8))
    cache = tmp_path / "cache"
    cmd = [sys.executable, str(ROOT / "preprocess.py"), "run", "--raw", str(raw), "--out", str(cache),
           "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = wait_for(lambda: any(cache.glob("case_*.json")), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert started and proc.returncode == 130, err
    assert err.strip() == "interrupted (Ctrl-C) during run; the cases preprocessed so far are kept: the same command continues"
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "preprocessed" in out.stdout


def test_the_interrupt_line_and_code(capsys):
    from engine.interrupts import Interrupted, on_interrupt, report
    on_interrupt(lambda exc: f"kept after {exc.name}")
    try:
        assert report(Interrupted("SIGTERM", 143)) == 143
        assert report(KeyboardInterrupt()) == 130
    finally:
        on_interrupt(None)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert capsys.readouterr().err.splitlines() == ["interrupted (SIGTERM) kept after SIGTERM",
                                                   "interrupted (Ctrl-C) kept after Ctrl-C"]


def test_a_synthesis_cut_short_is_finished_by_the_next_run(tmp_path, monkeypatch):
    """A procedural synthesis killed part-way (a preprocessing job's time limit) leaves case folders
    and no kits.json; the next prepare_data finishes it instead of failing on the missing metadata."""
    import data.synthetic as synthetic
    from data.prepare import synthesise_if_missing

    cfg = {"raw": str(tmp_path / "raw"), "synthesize_cases": 3, "synthesize_seed": 0, "synthesize_shape": [16, 48, 48],
           "synthesize_fov": "abdomen", "synthesize_bias": None, "synthesize_twins": False}
    real = synthetic._procedural_case
    calls = []

    def killed_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_procedural_case", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        synthesise_if_missing(cfg, progress=False, log=lambda _: None)
    raw = tmp_path / "raw"
    assert (raw / synthetic.PENDING_FILE).is_file() and not (raw / "kits.json").exists()
    monkeypatch.setattr(synthetic, "_procedural_case", real)
    said = []
    synthesise_if_missing(cfg, progress=False, log=said.append)
    assert said[0].startswith("finishing an interrupted synthesis: 3 procedural cases")
    assert (raw / "kits.json").is_file() and not (raw / synthetic.PENDING_FILE).exists()
    fresh = tmp_path / "fresh"
    synthesise_if_missing({**cfg, "raw": str(fresh)}, progress=False, log=lambda _: None)
    for case in ("case_00000", "case_00002"):
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            assert (raw / case / name).read_bytes() == (fresh / case / name).read_bytes()
    assert (raw / "kits.json").read_text() == (fresh / "kits.json").read_text()


def test_a_helper_keeps_quiet_when_the_main_process_stops_receiving(tmp_path):
    """A worker's resource sharer breaks its pipe when the main process stops receiving on an
    interrupt; its traceback would bury the one line (it raced into the process-group test above).
    Only that is silenced: any other error in a helper still prints."""
    script = tmp_path / "helper_hooks.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from engine.interrupts import shield_worker\n"
        "shield_worker()\n"
        "for exc in (BrokenPipeError(32, 'Broken pipe'), ConnectionResetError(104, 'reset'), ValueError('real')):\n"
        "    try:\n        raise exc\n    except Exception:\n        sys.excepthook(*sys.exc_info())\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ValueError: real" in out.stderr
    assert "BrokenPipeError" not in out.stderr and "ConnectionResetError" not in out.stderr
