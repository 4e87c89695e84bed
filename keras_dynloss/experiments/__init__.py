"""Runners that reproduce the paper's experiments (used by ``python -m keras_dynloss``).

* :mod:`~keras_dynloss.experiments.fig4`: Fig. 4, one spiral run with Γ(t), F(t),
  accuracy, Hessian and NTK λ_max.
* :mod:`~keras_dynloss.experiments.width_sweep`: final accuracy vs width and A.
* :mod:`~keras_dynloss.experiments.overparam`: amplitude x period grid on
  Fashion-MNIST.
"""
