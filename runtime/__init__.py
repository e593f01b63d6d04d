"""The layer above the data and the model: everything that turns flags into a run.

Layers, top to bottom; a module imports only its own group and the groups below it
(``tests/test_import_direction.py`` checks every import):

- ``cli``: flags, input checks before joining, set-up of TensorFlow, logger and folders;
  the two tools ``parse_results`` and ``plot_curves`` sit beside it at the top;
- ``loop``: the train / evaluate / predict / export loop, checkpoints, losses, optimizer, timing;
- ``execution``, ``inference``, ``reporting`` (side by side, none imports another):
  where the run executes (engines, device, cluster, signals, lock); how slices become
  masks and scores (strategies, metrics, export); what the run writes for people to read
  (log lines, TensorBoard, progress bar, overlays);
- below runtime/: the top-level packages ``data_loading`` and ``model``, and under them
  ``common`` (exceptions and exit statuses, Keras 2/3 shims, the network's geometry).
"""
