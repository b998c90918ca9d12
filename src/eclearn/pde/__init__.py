"""Physics-informed learning helpers: derivatives, collocation sampling, the convection problem.

Built on the core, never inside it: a PDE problem is an ``evaluate(model, batch)`` that
returns residual statistics, and each residual term becomes an equality constraint.

The runner plug-in (:class:`ConvectionExperiment`, :class:`ConvectionConfig`,
:func:`report_figures`) lives in :mod:`eclearn.pde.experiment` and is imported lazily on
first access, so ``import eclearn.pde`` does not need the ``runner`` extra (pydantic).
"""

from typing import Any

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

_LAZY = ("ConvectionConfig", "ConvectionExperiment", "report_figures")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from eclearn.pde import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module 'eclearn.pde' has no attribute {name!r}")


__all__ = [
    "DOMAIN_HIGH",
    "DOMAIN_LOW",
    "MLP",
    "PINN_WEIGHTS",
    "CollocationBatches",
    "ConvectionConfig",
    "ConvectionExperiment",
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
    "report_figures",
    "spectral_solution",
]
