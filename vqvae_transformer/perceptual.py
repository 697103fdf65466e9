"""Pretrained LPIPS, or a clear statement that it is unavailable — never a silent fallback.

Pretrained LPIPS needs two files on disk:

* the torchvision ImageNet backbone (AlexNet by default), which torchvision caches at
  ``torch.hub.get_dir()/checkpoints/<file name from the weights URL>`` and downloads on first use;
* the lpips package's own calibrated linear layers, ``lpips/weights/v0.1/<net>.pth`` (shipped in the wheel).

:func:`lpips_status` checks both without touching the network; :func:`load_pretrained_lpips` builds the
metric only when both are there. A random backbone (``lpips.LPIPS(pnet_rand=True)``) is never built here:
its figures are not LPIPS (docs/DESIGN.md §4, §7).
"""

from __future__ import annotations

import os
import re
import warnings
from importlib import util as importlib_util

import torch

# net name → (torchvision weights enum name, attribute of that enum) used by lpips.pretrained_networks.
_BACKBONE_WEIGHTS = {
    "alex": ("AlexNet_Weights", "IMAGENET1K_V1"),
    "vgg": ("VGG16_Weights", "IMAGENET1K_V1"),
    "squeeze": ("SqueezeNet1_1_Weights", "IMAGENET1K_V1"),
}
LPIPS_VERSION = "0.1"


class LPIPSUnavailableError(RuntimeError):
    """Pretrained LPIPS cannot be built offline; the message names the missing file and how to get it."""


def _check_net(net: str) -> None:
    if net not in _BACKBONE_WEIGHTS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(_BACKBONE_WEIGHTS)}")


def backbone_weights_url(net: str = "alex") -> str:
    """The URL torchvision downloads the ImageNet backbone of LPIPS ``net`` from."""
    _check_net(net)
    from torchvision import models

    enum_name, member = _BACKBONE_WEIGHTS[net]
    return getattr(getattr(models, enum_name), member).url


def backbone_checkpoint_path(net: str = "alex") -> str:
    """Where torchvision looks for the backbone file: ``torch.hub.get_dir()/checkpoints/<file name>``."""
    file_name = os.path.basename(backbone_weights_url(net))
    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


def linear_weights_path(net: str = "alex") -> str | None:
    """The lpips package's calibrated linear-layer file for ``net``, or None when lpips is not installed."""
    _check_net(net)
    spec = importlib_util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "weights", f"v{LPIPS_VERSION}", f"{net}.pth")


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """Whether pretrained LPIPS with backbone ``net`` can be built offline, without touching the network.

    Args:
        net: LPIPS backbone, ``"alex"`` (default), ``"vgg"`` or ``"squeeze"``.

    Returns:
        ``(available, reason)``; ``reason`` names the files found, or the missing file and how to get it.
    """
    lin_path = linear_weights_path(net)
    if lin_path is None:
        return False, "the lpips package is not installed; run `python setup_environment.py`"
    if not os.path.isfile(lin_path):
        return False, (
            f"the lpips package's linear-layer weights are missing at {lin_path}; "
            "reinstall it with `pip install --force-reinstall lpips`"
        )
    backbone = backbone_checkpoint_path(net)
    if not os.path.isfile(backbone):
        url = backbone_weights_url(net)
        return False, (
            f"torchvision's pretrained backbone for LPIPS ({net}) is missing at {backbone}; "
            f"download {url} into {os.path.dirname(backbone)} (or run once with internet access; "
            "set TORCH_HOME to use another cache folder)"
        )
    return True, f"pretrained LPIPS ({net}) available: backbone {backbone}, linear layers {lin_path}"


def _load_linear_layers(model: torch.nn.Module, path: str) -> None:
    """Load lpips' calibrated linear layers, checking the reported keys (lpips itself loads non-strictly)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # lin0..lin4 (lin5, lin6 for squeeze); `lins.*` are the same parameters seen through a ModuleList.
    missing_lin = [k for k in missing if re.match(r"lin\d", k)]
    if unexpected or missing_lin:
        raise LPIPSUnavailableError(
            f"{path} does not match lpips' linear layers (unexpected keys {unexpected}, "
            f"missing keys {missing_lin}); reinstall it with `pip install --force-reinstall lpips`"
        )


def load_pretrained_lpips(net: str = "alex") -> torch.nn.Module:
    """Build pretrained LPIPS from local files only.

    Args:
        net: LPIPS backbone, ``"alex"`` (default), ``"vgg"`` or ``"squeeze"``.

    Returns:
        An ``lpips.LPIPS`` module in eval mode with ``requires_grad=False`` on every parameter. Inputs are
        images in [-1, 1] (or [0, 1] with ``normalize=True`` in its forward).

    Raises:
        LPIPSUnavailableError: a required file is missing (the message says which and how to get it).
    """
    available, reason = lpips_status(net)
    if not available:
        raise LPIPSUnavailableError(reason)
    import lpips

    with warnings.catch_warnings():
        # lpips calls torchvision's deprecated `pretrained=True`; the file is already cached (checked above).
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models\._utils")
        model = lpips.LPIPS(net=net, version=LPIPS_VERSION, pretrained=False, pnet_rand=False, verbose=False)
    _load_linear_layers(model, linear_weights_path(net))
    model.eval()
    model.requires_grad_(False)
    return model
