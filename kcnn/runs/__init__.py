"""The run folder (marker, manifest, lock, reads and writes), model files and atomic writes. Imports no workflow."""
