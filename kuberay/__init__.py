"""Deployment tooling (not installed with the project): render.py and checks.py.

Run from the repository root: `python kuberay/render.py`, `python -m kuberay.checks`.
"""
