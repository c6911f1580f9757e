"""Data: labelled images and texts, checked when read, and fed to a model (transforms,
repeatable sampling, the decode-once pipeline)."""
