"""Runners that reproduce the paper's experiments (used by ``python -m keras_dynloss``).

* :mod:`~keras_dynloss.experiments.fig4`: Fig. 4, one spiral run with Γ(t), F(t),
  accuracy, Hessian and NTK λ_max.
* :mod:`~keras_dynloss.experiments.width_sweep`: final training and validation
  accuracy vs width, A and loss, per-cell distributions and rank tests.
* :mod:`~keras_dynloss.experiments.overparam`: amplitude x period grid on
  Fashion-MNIST (MLP or Myrtle-style CNN).
* :mod:`~keras_dynloss.experiments.stats`: n, mean ± std, median, IQR, fraction
  above a threshold; Mann–Whitney U (SciPy, optional) and Holm adjustment.
"""
