"""The leaf every package may import: exceptions and exit statuses, TensorFlow-version shims, geometry.

Nothing here imports another project module, so data_loading/ and model/ can use it
without reaching into the run's layers.
"""
