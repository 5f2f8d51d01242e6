"""Empirical neural tangent kernels and kernel-machine surrogates of a network (Engel et al. 2023).

``EmpiricalNTK`` computes trace / pseudo NTKs, exact or JL-projected, in chunks under a memory
limit; ``KernelLogisticRegression`` / ``KernelSVM`` fit scikit-learn kernel machines on a
precomputed kernel; ``NTKSurrogate`` fits one to a network's predictions, reports its faithfulness
and attributes through its decomposition :math:`\\hat f(x) = \\sum_i \\alpha_i K(x, z_i) + b`.
"""

from tda.ntk.attributor import NTKSurrogate
from tda.ntk.faithfulness import FaithfulnessReport, faithfulness
from tda.ntk.jacobian import iter_output_jacobians
from tda.ntk.kernel import (
    DegenerateKernelError,
    EmpiricalNTK,
    KernelTooLargeError,
    check_kernel,
    kernel_from_features,
)
from tda.ntk.surrogate import (
    KernelLogisticRegression,
    KernelMachine,
    KernelSVM,
    contributions,
    decision_function,
)

__all__ = [
    "DegenerateKernelError",
    "EmpiricalNTK",
    "FaithfulnessReport",
    "KernelLogisticRegression",
    "KernelMachine",
    "KernelSVM",
    "KernelTooLargeError",
    "NTKSurrogate",
    "check_kernel",
    "contributions",
    "decision_function",
    "faithfulness",
    "iter_output_jacobians",
    "kernel_from_features",
]
