"""The studies behind the numbers in ``benchmarks/results/``, each one module run from
the repository root as ``python -m benchmarks.<study>``:

* ``aggregation_speed``, ``detox_scaling``, ``scaling``, ``strategy_overhead``,
  ``history_cost``: speed and memory, always against peers measured in the same run;
* ``robustness``, ``field``, ``papers``, ``cell_geometry``: federated training under
  attack (:mod:`.harness` holds their trainer, store and process pool).

Each writes a generated results page (numbers, how they were made, the commit); what
the numbers mean is written by hand in ``benchmarks/results/README.md``.
"""
