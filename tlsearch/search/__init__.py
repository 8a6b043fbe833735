"""The search: Optuna studies around the training pipeline, their storage, samplers and pruners,
what is stored on each trial, the workers that share a study, and what the user watches."""
