"""Ctrl-C and SIGTERM in the entry points: one line saying what is complete and how to go on.

SIGINT (Ctrl-C) and SIGTERM (what SLURM sends before it kills a job) raise `Interrupted` in the
main thread wherever it is; the entry point catches it, lets the work in progress say what it
has kept (`on_interrupt`), prints one line and exits 130 or 143, with no traceback unless --debug.
The work registers what to say as it goes, so the line is true at the moment of the signal:

    interrupted (Ctrl-C) at epoch 7; last complete checkpoint runs/x/last.pt (epoch 5); continue
    with: python train.py --resume runs/x

Usage (an entry point's __main__ block):
    install()
    try:
        sys.exit(main())
    except Interrupted as exc:
        sys.exit(report(exc, debug="--debug" in sys.argv))

and in the work:
    on_interrupt(lambda exc: f"{n} cases done are kept; the same command continues")

Helper processes (DataLoader workers: `worker_init_fn=shield_worker`) ignore both signals: Ctrl-C in
a terminal and SLURM's scancel signal the whole process group, and a worker killed by them would
make PyTorch raise in the main process in the middle of its saving. The main process answers
for all; once it has said what is kept, `report` ends the helpers. Because they ignore SIGTERM, the
signal multiprocessing ends leftover helpers with at exit, `install` also registers `end_helpers`
to run at exit before multiprocessing's own join: without it, a process whose loader was never
closed (an error, a reference kept alive) would wait for its worker forever. Work that owns
helpers still closes them when it is done (engine/fit.py's `Trainer.close`).
"""
from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401  (its exit hook registered first, so ours runs before it)
import signal
import sys
import traceback
from typing import Callable

SIGNALS = {signal.SIGINT: ("Ctrl-C", 130), signal.SIGTERM: ("SIGTERM", 143)}


class Interrupted(KeyboardInterrupt):
    """A signal asked the process to stop; a KeyboardInterrupt (so no `except Exception` swallows
    it, and a writer cleaning up after Ctrl-C cleans up after SIGTERM alike)."""

    def __init__(self, name: str, code: int):
        super().__init__(name)
        self.name, self.code = name, code


_handler: Callable[[Interrupted], str] | None = None


def _raise(signum, _frame):
    name, code = SIGNALS[signum]
    raise Interrupted(name, code)


def install() -> None:
    """Route SIGINT and SIGTERM to Interrupted (the main thread of an entry point only)."""
    for sig in SIGNALS:
        signal.signal(sig, _raise)
    atexit.unregister(end_helpers)
    atexit.register(end_helpers)


# what a helper's background thread hits when the main process stops receiving from it
PEER_GONE = (BrokenPipeError, ConnectionResetError, EOFError)


def shield_worker(_worker_id: int | None = None) -> None:
    """In a helper process: leave SIGINT and SIGTERM to the main process (module docstring)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    sys.excepthook = _quiet_when_peer_gone(sys.excepthook)


def _quiet_when_peer_gone(previous):
    """multiprocessing's resource sharer, the thread that hands a batch's tensors to the main process,
    reports its errors through sys.excepthook. When the main process stops receiving (an interrupt
    it answers in one line), the hand-over breaks mid-way: that is the interrupt, not an error of
    the helper, and its traceback would bury the line. Every other error still prints."""
    def hook(exc_type, exc, tb):
        if not issubclass(exc_type, PEER_GONE):
            previous(exc_type, exc, tb)
    return hook


def on_interrupt(handler: Callable[[Interrupted], str] | None) -> None:
    """What the work in progress says (and does, e.g. save a checkpoint) when interrupted."""
    global _handler
    _handler = handler


def report(exc: BaseException, *, debug: bool = False) -> int:
    """Print the one line (after the handler's own saving, if any); the exit code."""
    if not isinstance(exc, Interrupted):          # a plain Ctrl-C, before install()
        exc = Interrupted("Ctrl-C", 130)
    if debug:
        traceback.print_exc()
    for sig in SIGNALS:                            # a second Ctrl-C now must not tear the saving
        signal.signal(sig, signal.SIG_IGN)
    try:
        said = _handler(exc) if _handler is not None else ""
    except Exception as err:  # noqa: BLE001 - the line must come out whatever the handler hit
        said = f"(could not say what is kept: {err})"
    print(f"interrupted ({exc.name})" + (f" {said}" if said else ""), file=sys.stderr, flush=True)
    end_helpers()
    return exc.code


def end_helpers() -> int:
    """Kill the helper processes still alive (shielded ones ignore SIGTERM; nothing of theirs is kept);
    how many there were."""
    children = multiprocessing.active_children()
    if children and hasattr(signal, "SIGCHLD"):   # PyTorch's loader would call a killed worker an error
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
        child.join(timeout=5)
    return len(children)
