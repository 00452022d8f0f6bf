"""Lookahead: the slow copy of the weights, and when it pulls the network back."""

import torch

from oculi.training.optim import Lookahead


def _synced(step: int, total_steps: int, force: bool = False):
    """A small net, its weights before, and after being moved +1 and then a Lookahead step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lookahead = Lookahead(model, every=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    lookahead.step(model, step, total_steps, force)
    return model, before, lookahead


def test_between_syncs_the_network_runs_ahead():
    model, before, _ = _synced(step=2, total_steps=10)  # not a 5th step: nothing happens
    assert torch.equal(model[0].weight, before["0.weight"] + 1)


def test_a_sync_moves_the_slow_copy_part_way_and_the_network_back_to_it():
    model, before, lookahead = _synced(step=9, total_steps=10)  # the last step: decay 0.95^5
    assert torch.allclose(model[0].weight, before["0.weight"] + (1 - 0.95 ** 5))
    assert torch.equal(lookahead.slow["0.weight"], model[0].weight)
    assert "1.running_var" in lookahead.slow  # BatchNorm statistics are averaged too
    assert "1.num_batches_tracked" not in lookahead.slow  # integers are not


def test_early_syncs_barely_smooth():
    model, before, _ = _synced(step=4, total_steps=10_000)  # progress 0.0005: decay ~1e-10
    assert torch.allclose(model[0].weight, before["0.weight"] + 1)


def test_forced_sync_at_an_epoch_end():
    model, before, lookahead = _synced(step=6, total_steps=8, force=True)  # the 7th step, not a 5th
    assert torch.allclose(model[0].bias, before["0.bias"] + (1 - 0.95 ** 5 * (7 / 8) ** 3))
    assert torch.equal(lookahead.slow["0.bias"], model[0].bias)
