"""The command line and the set-up: flags, input checks before joining, TensorFlow, logger and folders."""
