"""Steps that the modes compose by delegation, and the keys they store under.

- :mod:`.context`: ``ModeContext`` (what every step may use) and where stored artifacts are found;
- :mod:`.checks`: input checks a mode runs before any step;
- :mod:`.models`: ``train_task`` (the ``train`` step) and ``ModelSource`` (find / load / train a model);
- :mod:`.fit`: ``fit_patch`` and ``PatchFit`` (the ``attack`` step);
- :mod:`.evaluate_patch`: ``PatchEvaluation`` (fixed-condition evaluation of a task's patch);
- :mod:`.transfer`: ``Transfer`` (transfer matrix and robustness curves);
- :mod:`.report_builder`: ``ReportBuilder`` (the HTML report).
"""

#: struct.paths keys this mode writes besides the FileManager's registered ones
CURVES_KEY = "curves"
EXAMPLES_KEY = "examples"
EVAL_SUMMARY_KEY = "eval_summaries"
UNIVERSAL_TASK = "universal"
