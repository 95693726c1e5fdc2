"""kdflow: distil pre-trained language models (GLMD, CoDIR, GKD) and evaluate them on GLUE/SuperGLUE."""

__version__ = "0.1.0"
