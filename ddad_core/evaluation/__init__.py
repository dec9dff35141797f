"""Evaluation: ``evaluate.py`` runs a bundle over a labelled test set and writes the JSON; ``report.py`` renders the
HTML report; ``metrics.py`` holds the metrics (AUROC, exact AUPRO, F1-max, ...)."""
