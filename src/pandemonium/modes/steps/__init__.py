"""Steps that several modes compose (fit a patch, evaluate a stored patch) and the keys they store under."""

#: struct.paths keys this mode writes besides the FileManager's registered ones
CURVES_KEY = "curves"
EXAMPLES_KEY = "examples"
EVAL_SUMMARY_KEY = "eval_summaries"
UNIVERSAL_TASK = "universal"
