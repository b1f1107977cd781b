"""Patching: metrics, activation/path/attribution patching, ablation, HeadScores."""
