"""Measured cost of the attention backends and models (Table 1, Figures 4-5 of Feng 2025).

* :mod:`ea_zoo.analysis.complexity` -- ``ea-zoo complexity``: FLOPs, activation memory,
  decoding state and time of every backend, swept over L, D and the EA-series order t, with
  fitted log-log slopes printed beside Table 1's claims.
* :mod:`ea_zoo.analysis.train_cost` -- ``ea-zoo train-cost``: Figure 4 (training memory,
  BS-L curve, throughput) of the BERT-base-sized encoder.
* :mod:`ea_zoo.analysis.infer_cost` -- ``ea-zoo infer-cost``: Figure 5 (decoding memory and
  latency) of the causal LM.

Helpers: :mod:`~ea_zoo.analysis.flops` (fvcore FLOP counting with handles for every op the
backends use), :mod:`~ea_zoo.analysis.memory` (saved activations, live-tensor / CUDA peaks,
state bytes), :mod:`~ea_zoo.analysis.speed` (timing, CPU threads), :mod:`~ea_zoo.analysis.fit`
(log-log slopes), :mod:`~ea_zoo.analysis.plots`, :mod:`~ea_zoo.analysis.report` (JSON/CSV/
markdown with device, versions, dtype and date).
"""
