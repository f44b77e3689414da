"""A stage: one entry of a plan (harness.plan.Stage), run by one command, `python -m harness.stages
<stage.json>`.

Whoever runs a stage runs this: the local executor in its own process (one stage at a time) or as a
subprocess (several at once), a Ray task on a cluster node, and `accelerate launch` for the ranks of a
multi-process training stage (`--rank`). So a stage's log file, its failure, its one-line reason and its resume
behave the same everywhere.

The stage file (written by `harness.pipeline`, files.py) names the invocation (resolved config file and its hash,
MLflow URI and parent run, evaluation backend, log folder) and the planned stage. Running it (runner.py):

- skips a stage whose run folder is complete;
- otherwise does the stage's work in its run folder (one module per kind: task, base_model, sft, reward_model,
  judge, train, evaluate), marks it complete last, and returns an outcome (outcomes.py: `complete`, `skipped`,
  `failed` with a one-line reason, `blocked`), also written beside the stage file as `<stage>.outcome.json` for
  an executor that only sees the exit code;
- a cell's MLflow child run (cell_run.py) is opened by its first stage (train, or evaluate for the SFT baseline)
  and reused by the next, through the run id kept in the cell's folder: a stage that is retried or rerun
  continues the same run instead of creating a second one.
"""
