"""Where and how the run executes: the engine (single, Horovod, tf.distribute), the device, the cluster
rendezvous, signals and the model-dir lock. The loop asks these once and does not branch on them."""
