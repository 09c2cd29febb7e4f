"""The benchmark report: a pytest-benchmark JSON of ``benchmarks/`` turned into Markdown
(and, with matplotlib, PNG charts).

    pytest benchmarks/ --quick --benchmark-json=bench.json
    python -m xpnet.bench bench.json -o RESULTS.md        # or: xpnet bench bench.json -o ...

One module per job, in the order the data flows:

- ``results``: the JSON read into cases (``Case``: group, label, median, extra_info),
  grouped, each group's speed-ups over its baseline;
- ``analysis``: the headline figures (DeepConvNet's step against the book's code and
  PyTorch, the fraction of the GEMM peak, float16 inference) and the scaling sentences;
- ``markdown``: the report's sections; ``gpu``: the section of a GPU check's results;
- ``charts``: the PNGs (matplotlib is imported only there);
- ``report``: read, draw, render, write; ``cli``: the arguments of ``xpnet bench``.

Every ratio in the report is between two cases of the same run: shared machines are noisy,
and ratios measured together are what holds up.

``import xpnet`` does not load this package; the ``xpnet`` command loads only
``xpnet.bench.cli`` (the arguments of ``xpnet bench``), and the rest when a report is written.
"""
