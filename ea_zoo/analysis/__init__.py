"""Measured cost of the attention backends and models (Table 1, Figures 4-5 of Feng 2025).

* :mod:`ea_zoo.analysis.complexity` -- ``ea-zoo complexity``: FLOPs, activation memory,
  decoding state and time of every backend, swept over L, D and the EA-series order t, with
  fitted log-log slopes printed beside Table 1's claims.
* :mod:`ea_zoo.analysis.train_cost` -- ``ea-zoo train-cost``: Figure 4 (training memory,
  BS-L curve, throughput) of the BERT-base-sized encoder.
* :mod:`ea_zoo.analysis.infer_cost` -- ``ea-zoo infer-cost``: Figure 5 (decoding memory and
  latency) of the causal LM.

Every tool takes ``--backends`` as registered names, options (``name:key=val``), a forced SDPA
kernel (``sa[math]``) or a per-layer hybrid label (``ea6+sa@1``, measured as the whole model:
FLOPs, memory and decoding state summed over its layers); bad values are one-line
ValueErrors raised before any work (:mod:`~ea_zoo.analysis.common`).

Helpers: :mod:`~ea_zoo.analysis.common` (backend columns, argument checks),
:mod:`~ea_zoo.analysis.flops` (fvcore FLOP counting with handles for every op the
backends use), :mod:`~ea_zoo.analysis.memory` (saved activations, live-tensor / CUDA peaks,
state bytes), :mod:`~ea_zoo.analysis.speed` (timing, CPU threads), :mod:`~ea_zoo.analysis.fit`
(log-log slopes), :mod:`~ea_zoo.analysis.plots`, :mod:`~ea_zoo.analysis.report` (JSON/CSV/
markdown with device, versions, dtype and date).
"""
