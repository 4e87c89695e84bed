"""The paper's experiments, run by `python -m keras_dynloss`.

* `fig4`: Fig. 4, one spiral run with Γ(t), F(t), accuracy, Hessian and NTK λ_max.
* `width_sweep`: final spiral accuracy against width, A and seed, with rank tests.
* `overparam`: an amplitude x period grid on Fashion-MNIST (MLP or Myrtle-style CNN).
* `sweep`: the grids' skeleton (runs appended as they finish, resume, summary, tests, files);
  `workers`: its worker processes; `stats`: describe a cell, Mann–Whitney U, Holm;
  `provenance`: what produced a results file.
"""
