"""Evaluating a trained checkpoint on its config's held-out set (``jax3dmmstn evaluate``).

The model and its parameters come from :func:`jax3dmmstn.training.checkpoint.load_trained`
(the checkpoint code training uses); the held-out batches from the config saved with the
checkpoint, built as training builds them, so the numbers are those training reported.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping

import numpy as np

from jax3dmmstn.evaluation import heldout, metrics, shape_report
from jax3dmmstn.training import checkpoint, datasets

PER_IMAGE_CSV = "per_image.csv"
SUMMARY_JSON = "summary.json"


def write_per_image_csv(path: str, per_image: Mapping[str, np.ndarray]) -> str:
    """One row per held-out image: its index and each metric ({name: [N]})."""
    names = list(per_image)
    count = len(per_image[names[0]])
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", *names])
        for i in range(count):
            writer.writerow([i, *(repr(float(per_image[name][i])) for name in names)])
    return path


def evaluate_checkpoint(workdir: str, out_dir: str | None = None) -> dict:
    """Held-out metrics of the latest checkpoint in ``workdir``.

    Writes ``per_image.csv`` and ``summary.json`` into ``out_dir`` (default
    ``workdir/evaluation``) and returns the summary: the means of the per-image metrics
    (as in ``final_metrics.json``) plus 'step' (the checkpoint's) and 'num_images'. On
    synthetic faces also ``shape_report.json`` and ``shapes.png`` (``shape_report.write``)
    and the summary's 'ratio_to_mean_shape'.
    Raises FileNotFoundError / ValueError as :func:`~jax3dmmstn.training.load_trained` does.
    """
    trained = checkpoint.load_trained(workdir)
    batches = datasets.build_heldout(trained.config, trained.morphable_model)
    predict = heldout.make_eval_fn(trained.model)
    per_image, _ = heldout.per_image_metrics(
        predict, trained.params, batches, trained.morphable_model
    )
    summary = dict(
        metrics.summarise(per_image), step=trained.step, num_images=len(per_image["nme"])
    )
    out_dir = out_dir or os.path.join(os.path.abspath(workdir), "evaluation")
    os.makedirs(out_dir, exist_ok=True)
    write_per_image_csv(os.path.join(out_dir, PER_IMAGE_CSV), per_image)
    if all("theta" in batch for batch in batches):  # synthetic faces: the true shape is known
        predictions = shape_report.collect(predict, trained.params, batches)
        report = shape_report.write(out_dir, trained.morphable_model, predictions)
        summary["ratio_to_mean_shape"] = report["ratio_to_mean_shape"]
    with open(os.path.join(out_dir, SUMMARY_JSON), "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary
