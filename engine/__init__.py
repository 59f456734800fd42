"""The machinery train.py and evaluate.py share, one job per module.

    runtime.py    distributed setup, device, mixed precision, seeds, unwrapping DDP
    builders.py   loss, optimiser and schedule from the config (registries), name checks
    rundata.py    a run's data: cache made ready, split, group columns, the run's group index
    fit.py        the Trainer: network + mitigations + optimiser, the loop, checkpoints, validation
    logging.py    TensorBoard: per-step losses, per-group audits, validation pictures
    scoring.py    one scoring path for a case: predict, write back, score
    runs.py       run folders, the "run finished" marker, --seeds / --sweep plans (--task I), the interrupt line
    slurm.py      SLURM scripts of a batch: preprocessing job, job array of one task per run, submit
    interrupts.py Ctrl-C / SIGTERM in the entry points: one line on what is kept, exit 130 / 143

The entry scripts call these in phases; nothing here imports an entry script (preprocess.py
uses interrupts.py alone).
"""
