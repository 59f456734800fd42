"""The audit's orchestration: what `evaluate.py`'s modes compute, importable from a notebook.

    from audit.predictions import score_predictions       # --pred: label maps scored here
    from audit.checkpoints import evaluate_checkpoint     # --ckpt: a model predicted and scored
    from audit.compare import load_methods                # --compare: methods side by side
    from audit.results import write_reports               # the tables, figures and report.html
    from audit.modes import run_audit, run_checkpoints, run_compare, group_dice   # a whole mode

Here: reading and scoring what is audited, writing its results, dispatching a mode. Not here: the
statistics, metrics, tables and figures themselves (fairness/), reading files (data/), predicting
(engine/). Functions that take `args` take evaluate.py's parsed options (evaluate.build_parser).
"""
