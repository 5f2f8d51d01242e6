"""Attribution on a causal language model against curvatures built by hand with autograd."""

from functools import partial

import pytest
import torch
from torch.func import functional_call

from tda.curvature import EKFACSolver, ExplicitSolver, kronecker_parameters, simple
from tda.curvature.simple import gauss_newton_diagonal
from tda.data import Examples
from tda.methods.influence import InfluenceFunction
from tda.methods.tracin import TracIn
from tda.models import build_model
from tda.task import IGNORE_INDEX, LanguageModelingTask
from tda.training import TrainConfig
from tda.training import train as tda_train
from tda.transformer import CausalTransformer

TASK = LanguageModelingTask()
DAMPING = 1.0  # above the magnitude of the indefinite Hessian's most negative eigenvalue here


def _sequences(count: int, seed: int) -> Examples:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, 5, (count, 4), generator=generator)
    targets = torch.randint(0, 5, (count, 4), generator=generator)
    targets[:, 0] = IGNORE_INDEX
    return Examples(inputs, targets)


class CoupledTask(LanguageModelingTask):
    """The token loss plus a term across all positions: its Hessian in the logits is not
    block-diagonal over positions."""

    def loss(self, logits, target):
        return super().loss(logits, target) + 0.1 * torch.logsumexp(logits.flatten(-2), -1)


class FlatModel:
    """A tiny transformer as functions of its flattened parameter vector."""

    def __init__(self, task=TASK) -> None:
        self.task = task
        factory = partial(
            CausalTransformer, vocab_size=5, context=4, dim=4, heads=1, layers=1, hidden=4
        )
        self.model = build_model(factory, seed=3, dtype=torch.float64)
        self.names = [name for name, _ in self.model.named_parameters()]
        self.shapes = [p.shape for p in self.model.parameters()]
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def logits(self, vector, data):
        pieces = torch.split(vector, [s.numel() for s in self.shapes])
        params = {
            n: piece.reshape(s) for n, piece, s in zip(self.names, pieces, self.shapes, strict=True)
        }
        return functional_call(self.model, params, (data.inputs,))

    def value(self, vector, data, function):
        return getattr(self.task, function)(self.logits(vector, data), data.targets)

    def hessian(self, data):
        # reverse-over-reverse autograd, not torch.func.hessian: in torch 2.13 the vmapped second
        # derivative of layer_norm (jacfwd or jacrev over jacrev) is wrong, off by up to 15% here
        mean_loss = lambda v: self.value(v, data, "loss").mean()  # noqa: E731
        return torch.autograd.functional.hessian(mean_loss, self.flat)

    def gauss_newton(self, data):
        """(1/n) sum_i J_i^T H_i J_i: logit Jacobians and the loss's Hessian in the logits."""
        terms = [self._gauss_newton_term(data.subset([i])) for i in range(len(data))]
        return sum(terms) / len(data)

    def _gauss_newton_term(self, one):
        jacobian = torch.autograd.functional.jacobian(lambda v: self.logits(v, one), self.flat)
        logits = self.logits(self.flat, one).detach()
        inner = torch.autograd.functional.hessian(
            lambda o: self.task.loss(o.reshape(logits.shape), one.targets).sum(),
            logits.reshape(-1),
        )
        jacobian = jacobian.reshape(-1, len(self.flat))
        return jacobian.T @ inner @ jacobian


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_influence_equals_the_closed_form_with_a_hand_built_curvature(curvature):
    problem = FlatModel()
    train, queries = _sequences(6, seed=0), _sequences(2, seed=1)
    if curvature == "hessian":
        matrix = problem.hessian(train)
        assert torch.linalg.eigvalsh(matrix).min() > -DAMPING
    else:
        matrix = problem.gauss_newton(train)
    grad = torch.func.jacrev(problem.value)
    query_gradients = grad(problem.flat, queries, "output")
    train_gradients = grad(problem.flat, train, "loss")
    damped = matrix + DAMPING * torch.eye(len(problem.flat), dtype=torch.float64)
    expected = -query_gradients @ torch.linalg.solve(damped, train_gradients.T) / len(train)

    solver = ExplicitSolver(curvature=curvature, damping=DAMPING)
    scores = InfluenceFunction(solver, task=TASK).fit(problem.model, train).score(queries)
    torch.testing.assert_close(scores, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("task", [TASK, CoupledTask()], ids=["token_losses", "coupled"])
def test_gauss_newton_diagonal_of_sequence_logits_matches_the_full_matrix(task):
    problem, train = FlatModel(task), _sequences(6, seed=0)
    diagonal = gauss_newton_diagonal(problem.model, task, train)
    expected = torch.diagonal(problem.gauss_newton(train))
    torch.testing.assert_close(diagonal, expected, rtol=1e-10, atol=1e-14)


def test_gauss_newton_diagonal_shrinks_its_chunks_to_the_memory_budget(monkeypatch):
    problem, train = FlatModel(), _sequences(6, seed=0)
    whole = gauss_newton_diagonal(problem.model, TASK, train, chunk_size=64)
    monkeypatch.setattr(simple, "DIAGONAL_CHUNK_BYTES", 1)
    params = dict(problem.model.named_parameters())
    shape = simple._logit_shape(problem.model, train)
    assert simple._fitting_chunk(shape, params, 64) == 1
    single = gauss_newton_diagonal(problem.model, TASK, train, chunk_size=64)
    torch.testing.assert_close(single, whole, rtol=1e-12, atol=1e-15)


def test_parameters_may_be_chosen_by_a_function_of_the_model():
    problem, train = FlatModel(), _sequences(6, seed=0)
    names = kronecker_parameters(problem.model)
    by_rule = InfluenceFunction(EKFACSolver(), task=TASK, parameters=kronecker_parameters)
    assert by_rule.config()["parameters"] == "kronecker_parameters(model)"
    by_name = InfluenceFunction(EKFACSolver(), task=TASK, parameters=names)
    scores = by_rule.fit(problem.model, train).score(train)
    torch.testing.assert_close(scores, by_name.fit(problem.model, train).score(train))
    assert by_rule.config()["parameters"] == names


def test_tracin_takes_the_same_parameter_rule(tmp_path):
    factory = partial(CausalTransformer, vocab_size=5, context=4, dim=4, heads=1, layers=1)
    model, train = build_model(factory, seed=0, dtype=torch.float64), _sequences(8, seed=0)
    config = TrainConfig(epochs=2, batch_size=4, checkpoints=2)
    checkpoints = tda_train(model, train, config, task=TASK, checkpoint_dir=tmp_path).checkpoints
    double = lambda: factory().double()  # noqa: E731
    names = kronecker_parameters(model)

    def scores(parameters):
        tracin = TracIn(task=TASK, parameters=parameters)
        return tracin.fit(double, checkpoints, train).score(train)

    torch.testing.assert_close(scores(kronecker_parameters), scores(names), rtol=0, atol=0)
    assert not torch.equal(scores(kronecker_parameters), scores(None))  # embeddings left out
