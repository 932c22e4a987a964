"""Contract tests over every registered part (built-in or installed), in 2D and 3D."""

from __future__ import annotations

import inspect

import pytest
import torch

import toolbox

SIZES = {2: (37, 45), 3: (19, 21, 23)}  # odd sizes: networks must pad and crop back


def _names(kind):
    return sorted(toolbox.components(kind))


def _build_network(kind, name, dims, in_channels):
    component = toolbox.components(kind)[name]
    spec = {"type": name, **component.example}
    injected = {"spatial_dims": dims, "in_channels": in_channels}
    if kind == "generators":
        injected["out_channels"] = in_channels
    return toolbox.build(kind, spec, **injected)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", _names("generators"))
def test_generator_shape_and_finite(name, dims):
    torch.manual_seed(0)
    net = _build_network("generators", name, dims, 1).eval()
    x = torch.rand(2, 1, *SIZES[dims])
    with torch.no_grad():
        out = net(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", _names("generators"))
def test_generator_gradients_flow(name, dims):
    net = _build_network("generators", name, dims, 1).train()
    x = torch.rand(2, 1, *SIZES[dims])
    out = net(x)
    outputs = list(out) if isinstance(out, (tuple, list)) else [out]
    sum(o.mean() for o in outputs).backward()  # every output head gets a gradient
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", _names("discriminators"))
def test_discriminator_logit_maps(name, dims):
    net = _build_network("discriminators", name, dims, 2).train()
    x = torch.rand(2, 2, *[32] * dims, requires_grad=True)
    out = net(x)
    maps = list(out) if isinstance(out, (tuple, list)) else [out]
    for logits in maps:  # a map of logits per scale, batch first, one channel
        assert logits.shape[0] == 2 and logits.shape[1] == 1
        assert torch.isfinite(logits).all()
    sum(m.mean() for m in maps).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _is_adversarial(loss) -> bool:
    return "target_is_real" in inspect.signature(loss.forward).parameters


@pytest.mark.parametrize("name", _names("losses"))
def test_loss_finite_with_gradient(name):
    component = toolbox.components("losses")[name]
    loss = toolbox.build("losses", {"type": name, **component.example})
    for dims in (2, 3):
        prediction = torch.rand(2, 1, *[16] * dims, requires_grad=True)
        if _is_adversarial(loss):
            values = [loss(prediction, real, for_discriminator=d) for real in (True, False) for d in (True, False)]
            value = sum(values)
        else:
            kwargs = {"spatial_dims": dims} if "spatial_dims" in component.options() else {}
            if kwargs:
                loss = toolbox.build("losses", {"type": name, **component.example, **kwargs})
            value = loss(prediction, torch.rand(2, 1, *[16] * dims))
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
        assert prediction.grad is not None and torch.isfinite(prediction.grad).all()
        assert prediction.grad.abs().sum() > 0


@pytest.mark.parametrize("name", _names("noise_models"))
def test_noise_model_is_seeded_and_keeps_shape(name):
    component = toolbox.components("noise_models")[name]
    noise = toolbox.build("noise_models", {"type": name, **component.example})
    clean = torch.rand(1, 24, 24)
    a = noise(clean, torch.Generator().manual_seed(5))
    b = noise(clean, torch.Generator().manual_seed(5))
    c = noise(clean, torch.Generator().manual_seed(6))
    assert a.shape == clean.shape and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, clean)


@pytest.mark.parametrize("name", _names("optimizers"))
def test_optimizer_steps(name):
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = toolbox.build("optimizers", {"type": name}, params=[weight])
    (weight**2).sum().backward()
    optimizer.step()
    assert (weight < 1).all()


@pytest.mark.parametrize("name", _names("readers"))
def test_reader_is_a_monai_image_reader(name):
    from monai.data import ImageReader

    assert isinstance(toolbox.build("readers", {"type": name}), ImageReader)
