"""Ray Tune hyperparameter searches (`python -m tune ...`)."""
