"""The sentence-embedding model: finding and loading it, training it (the loss table), exporting it
to ONNX."""
