"""Bring your own model: train a model, data set, loss and optimiser of your own with
the same planning, uneven split, LC protection and failure handling as the built-in jobs.

    import deepedge
    job = deepedge.Job(model=make_model, data=(X, y), eval_data=(Xt, yt), epochs=3)
    result = deepedge.fit(job, "examples/small-cluster.yaml")

Names are loaded lazily (:mod:`deepedge.lazy`): importing this package imports no torch.
"""

from deepedge.lazy import lazy_exports

__all__ = [
    "FitResult",
    "Job",
    "Metrics",
    "PreparedJob",
    "TensorData",
    "evaluate",
    "fit",
    "prepare",
]

_LAZY = {
    "FitResult": "deepedge.byo.fit",
    "Job": "deepedge.byo.job",
    "Metrics": "deepedge.byo.fit",
    "PreparedJob": "deepedge.byo.job",
    "TensorData": "deepedge.byo.data",
    "evaluate": "deepedge.byo.fit",
    "fit": "deepedge.byo.fit",
    "prepare": "deepedge.byo.job",
}

__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
