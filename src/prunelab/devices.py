"""Which torch device a run asked for, refused in one line when it is none or unusable here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prunelab.errors import PrunelabError

if TYPE_CHECKING:
    import torch


def check_device(device) -> None:
    """`device` names a torch device (None: the default placement)."""
    if device is None:
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunelabError(f"{device!r} is not a torch device", "use e.g. cpu or cuda:0") from None


def resolve_device(device: str | None) -> torch.device | None:
    """`device` as a torch.device (None stays None); one line when it is not a device or
    torch cannot use it here."""
    if device is None:
        return None
    import torch

    check_device(device)
    found = torch.device(device)
    if found.type == "cuda" and not torch.cuda.is_available():
        raise PrunelabError(f"device {device} was asked for, but torch sees no CUDA GPU here",
                            "leave --device out to run on the CPU")
    return found
