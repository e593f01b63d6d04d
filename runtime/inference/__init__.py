"""From slices to masks and scores: the resize and tile strategies, the challenge metrics, the export."""
