"""Competition data formats: RLE masks and the ``train.csv`` + ``train_images/`` dataset folder."""
