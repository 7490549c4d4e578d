"""Look at robodream's data and runs in the Rerun viewer (``robodream view``).

Public API (:mod:`robodream.viz.rerun_view`)::

    view(path, episodes=None, out=None, spawn=False) -> ViewSummary   any input: dataset, run, .ply
    view_dataset(path, episodes, out, spawn)                           a LeRobotDataset v3.0
    view_run(path, out, spawn)                                         a training or reconstruction run

``rerun-sdk`` is an optional dependency (``pip install 'robodream[viz]'``), imported on first use.
"""
