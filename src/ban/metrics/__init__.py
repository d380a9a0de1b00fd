"""Evaluation metrics in the published units: the official VQA accuracy (:mod:`ban.metrics.vqa`) and phrase
grounding recall (:mod:`ban.metrics.grounding`)."""
