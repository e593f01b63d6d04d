"""What a run writes for people to read: dllogger lines, TensorBoard, the progress bar, overlay pictures."""
