"""Files on disk -> batches: annotations and splits, vocabulary, features, datasets, synthetic data.

Knows nothing of the model; the model reads only the tensors a `Batch` carries.
"""
