"""Data: readers for real image data sets, long-tailed splits, on-device batches and augmentation."""
