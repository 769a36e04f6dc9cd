"""seqrerank core: data, models, training, evaluation. Never reads params.yaml or argv; takes typed configs."""

__version__ = "0.1.0"
