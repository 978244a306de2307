"""Benchmarks that tell the attention backends apart (issue #13).

* :mod:`ea_zoo.bench.mqar` -- ``ea-zoo mqar``: multi-query associative recall (Zoology /
  Based) accuracy vs decode-state size and vs the number of key-value pairs;
* :mod:`ea_zoo.bench.vit_fmnist` -- ``ea-zoo bench-vit``: a small timm ViT on Fashion-MNIST
  for every backend (test accuracy over seeds, time per epoch, peak memory);
* :mod:`ea_zoo.bench.charlm` -- ``ea-zoo charlm``: character-level language modelling on Tiny
  Shakespeare (nanoGPT's CPU recipe; validation loss, tokens/s, samples, decode ms/token);
* :mod:`ea_zoo.bench.summary` -- ``ea-zoo which-backend``: one table, one row per backend,
  from the result files of the three and of the Table 3-4 ablations.

Shared pieces (backend lists, config-keyed runs, outputs) are in :mod:`ea_zoo.bench.common`.
"""
