"""layerscope: build, train and dissect neural networks layer by layer."""

__version__ = "0.1.0"
