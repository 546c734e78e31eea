"""Command-line tools (``python -m dataseg.tools.<name>``): ``convert_weights`` (pretrained
checkpoints to ``MODEL.WEIGHTS`` files) and ``export`` (ONNX export and ``OnnxPredictor``)."""
