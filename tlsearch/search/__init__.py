"""The search without its storage: the study file's inputs checked and loaded, the objective around
the training pipeline, samplers and pruners, what is stored on studies and trials, and what the
user watches. Opening, creating and running a study in its storage is :mod:`tlsearch.runner`'s,
which imports this package; nothing here imports the runner."""
