"""One training step for nin train and nin compare: the same recipe, seed and data give the same weights."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nin.config import Config, Recipe
from nin.models.nin import NiN
from nin.runtime import Runtime, local
from nin.training import compare as compare_module
from nin.training.loop import train
from nin.training.step import EpochState, train_step


@pytest.mark.slow  # trains for seconds: the full suite, not the quick tier
def test_compare_and_train_end_with_identical_weights(tmp_path, monkeypatch):
    real = compare_module.splits  # compare's data cut as --train-limit 256 --test-limit 100 cut nin train's
    limited = lambda config, data_dir: real(dataclasses.replace(config, train_limit=256, test_limit=100), data_dir)  # noqa: E731
    monkeypatch.setattr(compare_module, "splits", limited)
    recipe = Recipe(budget=512, resize=67, batch_size=64, lr=0.01, momentum=0.9, seed=3, device="cpu",
                    precision="fp32")  # fmt: skip
    rt = local("cpu", "fp32")
    train_iter, test_iter, _ = compare_module.batches(recipe, None, rt)
    net, row = compare_module.train_model("nin", recipe, train_iter, test_iter, rt)

    config = Config(arch="nin", resize=67, batch_size=64, lr=0.01, momentum=0.9, seed=3, init="kaiming",
                    dropout=0.5, epochs=2, train_limit=256, test_limit=100, device="cpu", precision="fp32")  # fmt: skip
    history = train(config, tmp_path)
    trained = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(net.state_dict()[k], trained[k]) for k in trained)
    assert row["test_acc"] == history[-1]["test_acc"]


def test_the_step_is_d2ls_mean_cross_entropy_and_sgd_update():
    torch.manual_seed(0)
    net = NiN(dropout=0.0)
    x, y = torch.rand(6, 1, 67, 67), torch.tensor([0, 1, 2, 3, 4, 5])
    reference = NiN(dropout=0.0)
    reference.load_state_dict(net.state_dict())
    rt = Runtime(torch.device("cpu"))
    state = EpochState.start(rt.device)
    loss = train_step(net, torch.optim.SGD(net.parameters(), lr=0.1), x, y, rt, state)

    logits = reference(x)
    expected = F.cross_entropy(logits, y)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach())
    first = next(reference.parameters())
    torch.testing.assert_close(next(net.parameters()), first.detach() - 0.1 * first.grad)
    assert state.seen == 6 and state.correct.item() == (logits.argmax(1) == y).sum().item()
    torch.testing.assert_close(state.loss_sum, expected.detach() * 6)
    assert state.saved(rt)[:3] == [state.loss_sum.item(), state.correct.item(), 6]
