import torch

from oculi.training.checkpoint import load_checkpoint, save_checkpoint
from oculi.training.optim import build_optimizer, lr_factor


def test_checkpoint_restores_model_and_optimizer_exactly(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    for name in ("adamw", "sgd", "rmsprop"):
        opt = build_optimizer(model, name, 1e-2, 1e-4, 0.9)
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
        path = tmp_path / f"{name}.safetensors"
        save_checkpoint(path, model.state_dict(), model.state_dict(), opt, {"epoch": 3, "history": [{"a": 1}]})
        m_state, best, o_state, meta = load_checkpoint(path)
        assert meta["epoch"] == 3 and meta["history"] == [{"a": 1}]
        assert all(torch.equal(m_state[k], v) for k, v in model.state_dict().items())
        fresh = build_optimizer(model, name, 1e-2, 1e-4, 0.9)
        fresh.load_state_dict(o_state)
        for pid, values in opt.state_dict()["state"].items():
            for key, value in values.items():
                restored = fresh.state_dict()["state"][pid][key]
                assert torch.equal(torch.as_tensor(restored), torch.as_tensor(value))


def test_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 100, 10, "cosine") for s in range(100)]
    assert factors[0] == 0.1 and factors[9] == 1.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 0.01
    assert lr_factor(50, 100, 10, "constant") == 1.0
    assert max(lr_factor(s, 100, 0, "onecycle") for s in range(100)) == 1.0
