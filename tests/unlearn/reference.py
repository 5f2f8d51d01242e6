"""The small reference setting the unlearning tests share: an MLP 40-64-10 trained on MNIST-1D."""

from functools import partial

from tda.models import MLP
from tda.training import TrainConfig

FACTORY = partial(MLP, 40, (64,), 10)
TRAIN_CONFIG = TrainConfig(epochs=40, batch_size=32)
