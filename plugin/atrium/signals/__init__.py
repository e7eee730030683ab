"""Signal recordings (ECG, EEG): file readers and writers, the lossless codec, the store."""
