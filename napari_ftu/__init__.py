"""napari-ftu: segment functional tissue units in biopsy slides."""
