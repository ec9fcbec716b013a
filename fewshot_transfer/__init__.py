"""fewshot-transfer (ftbench): few-shot COVID-19 lung-CT lesion segmentation and CAP transfer benchmarks."""

__version__ = "0.1.0"
