"""The experiment: the training loop, its callbacks, and likelihood scoring for decoders."""
