"""Training: the pipeline that runs a trial's stages, the heads, the frozen features and their
cache. Nothing here knows about Optuna: a trial is plain parameters in, a result out."""
