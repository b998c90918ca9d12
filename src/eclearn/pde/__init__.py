"""Physics-informed learning helpers: derivatives, collocation sampling, the convection problem.

Built on the core, never inside it: a PDE problem is an ``evaluate(model, batch)`` that
returns residual statistics, and each residual term becomes an equality constraint.
"""

from eclearn.pde.convection import (
    DOMAIN_HIGH,
    DOMAIN_LOW,
    PINN_WEIGHTS,
    ConvectionProblem,
    ReferenceGrid,
    bc_residual,
    exact_solution,
    ic_residual,
    max_abs_error,
    pde_residual,
    predict_on_grid,
    reference_grid,
    reference_solution,
    relative_l2_error,
    spectral_solution,
)
from eclearn.pde.derivatives import gradient, laplacian, mean_squared, partial
from eclearn.pde.models import MLP
from eclearn.pde.sampling import (
    CollocationBatches,
    FixedPoints,
    PairedFaces,
    Sampler,
    UniformSampler,
)

__all__ = [
    "DOMAIN_HIGH",
    "DOMAIN_LOW",
    "MLP",
    "PINN_WEIGHTS",
    "CollocationBatches",
    "ConvectionProblem",
    "FixedPoints",
    "PairedFaces",
    "ReferenceGrid",
    "Sampler",
    "UniformSampler",
    "bc_residual",
    "exact_solution",
    "gradient",
    "ic_residual",
    "laplacian",
    "max_abs_error",
    "mean_squared",
    "partial",
    "pde_residual",
    "predict_on_grid",
    "reference_grid",
    "reference_solution",
    "relative_l2_error",
    "spectral_solution",
]
