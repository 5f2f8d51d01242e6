"""Curvature of the mean training loss as pure functions, and inverse-HVP solvers.

Every solver follows :class:`CurvatureSolver`: ``fit(model, task, train, parameters=...)`` then
``solve(vectors)`` returns :math:`(H + \\lambda I)^{-1}` applied to ``[q, p]`` rows in
:mod:`tda.grads` parameter order.
"""

from tda.curvature.base import (
    Curvature,
    CurvatureSolver,
    NotPositiveDefiniteError,
    SolverDivergedError,
)
from tda.curvature.explicit import ExplicitSolver, explicit_curvature
from tda.curvature.hvp import (
    curvature_vector_product,
    gauss_newton_vector_product,
    hessian_vector_product,
)
from tda.curvature.iterative import (
    LISSA_TRUNCATION_TOLERANCE,
    ConjugateGradientSolver,
    LiSSASolver,
    SolverConvergenceWarning,
    conjugate_gradient,
    lissa,
    lissa_required_depth,
    lissa_truncation,
)
from tda.curvature.kfac import EKFACSolver, KFACSolver
from tda.curvature.kronecker import (
    KroneckerEigenbasis,
    apply_in_eigenbasis,
    fit_kronecker_eigenbases,
    kronecker_parameters,
    sample_targets,
)
from tda.curvature.simple import (
    DiagonalSolver,
    IdentitySolver,
    empirical_fisher_diagonal,
    gauss_newton_diagonal,
)

__all__ = [
    "LISSA_TRUNCATION_TOLERANCE",
    "ConjugateGradientSolver",
    "Curvature",
    "CurvatureSolver",
    "DiagonalSolver",
    "EKFACSolver",
    "ExplicitSolver",
    "IdentitySolver",
    "KFACSolver",
    "KroneckerEigenbasis",
    "LiSSASolver",
    "NotPositiveDefiniteError",
    "SolverConvergenceWarning",
    "SolverDivergedError",
    "apply_in_eigenbasis",
    "conjugate_gradient",
    "curvature_vector_product",
    "empirical_fisher_diagonal",
    "explicit_curvature",
    "fit_kronecker_eigenbases",
    "gauss_newton_diagonal",
    "gauss_newton_vector_product",
    "hessian_vector_product",
    "kronecker_parameters",
    "lissa",
    "lissa_required_depth",
    "lissa_truncation",
    "sample_targets",
]
