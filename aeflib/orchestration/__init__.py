"""Orchestration: the stage records, ``aef run`` (papermill over the notebooks), the report, sweeps, the command.

One-way dependencies, each module importing only those before it::

    checks     CHECKS, RELATIONS, check_settings     what each setting may be (RunSettings.validate runs them)
    settings   Param, Stage, STAGES, RunSettings     the records every other place is derived from
    report     report.md from metrics.json           one section per stage record
    kernel     the stage kernel                      this interpreter, why it died, clean outputs
    runner     run(RunSettings) -> RunOutcome        executes the stage notebooks, writes the report
    sweep      compare(...), reproduce(...)          many runs: criteria on one model, the paper per model
    cli        the `aef` command                     one option per notebook parameter

The report comes before the runner because a run writes its report when it ends (even when a stage fails).
This package imports none of them itself: ``import aeflib.orchestration.settings`` stays light (no torch).

Source: [ours].
"""
