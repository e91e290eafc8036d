"""The stages of `nas-mpq`, one module each: pretrain, search, finalize, evaluate, sensitivity,
run (the whole pipeline and its report) and sweep (Optuna studies of runs). Each reads a config,
runs, and writes plain files to its run directory; base.StageCLI is what the Lightning stages
share, parser.StageArgumentParser how they read their configs."""
