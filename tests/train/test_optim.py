"""Lookahead: the slow copy of the weights, and when it pulls the network back."""

import pytest
import torch

from oculi.train.optim import Lookahead


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def _nudge(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)


def test_between_syncs_the_network_runs_ahead():
    model = _model()
    lookahead = Lookahead(model, every=5)
    _nudge(model)
    ahead = model[0].weight.clone()
    lookahead.step(model, step=2, total_steps=10)  # not a 5th step: nothing happens
    assert torch.equal(model[0].weight, ahead)


def test_a_sync_moves_the_slow_copy_part_way_and_the_network_back_to_it():
    model = _model()
    start = model[0].weight.clone()
    lookahead = Lookahead(model, every=5)
    _nudge(model)
    lookahead.step(model, step=9, total_steps=10)  # the last step: decay 0.95^5
    decay = 0.95 ** 5
    assert torch.allclose(model[0].weight, start + (1 - decay) * 1.0)
    assert torch.equal(lookahead.slow["0.weight"], model[0].weight)
    assert torch.equal(lookahead.slow["1.running_var"], model[1].running_var)  # statistics follow too
    assert "1.num_batches_tracked" not in lookahead.slow  # integers are not averaged


def test_early_syncs_barely_smooth():
    model = _model()
    lookahead = Lookahead(model, every=5)
    _nudge(model)
    nudged = model[0].weight.clone()
    lookahead.step(model, step=4, total_steps=10_000)  # progress 0.0005: decay ~1e-10
    assert torch.allclose(model[0].weight, nudged)


def test_forced_sync_at_an_epoch_end():
    model = _model()
    start = model[0].bias.clone()
    lookahead = Lookahead(model, every=5)
    _nudge(model)
    lookahead.step(model, step=6, total_steps=8, force=True)  # the 7th step, not a 5th: forced
    decay = 0.95 ** 5 * (7 / 8) ** 3
    assert torch.allclose(model[0].bias, start + (1 - decay) * 1.0)
    assert torch.equal(lookahead.slow["0.bias"], model[0].bias)
