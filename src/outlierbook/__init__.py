"""Outlier Book: a literate reproduction of four papers on transformer quantization.

The package is the small library every chapter imports. Its data flow is

    load model + task data -> wrap with named quantization nodes -> (optional) transform
    -> calibrate ranges -> evaluate the task metric -> record results and claims -> figures

See ``book/intro.md`` for the reader's view and ``outlierbook.registry`` for the chapters.
"""

__version__ = "0.1.0"
