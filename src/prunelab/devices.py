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


# The torch dtype of each precision name (`prunelab.checks.DTYPES`).
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name) -> torch.dtype:
    """The torch dtype of a precision name (fp32, bf16, fp16); a torch dtype passes through."""
    import torch

    from prunelab.checks import check_dtype_name

    if isinstance(name, torch.dtype):
        if name not in (getattr(torch, t) for t in _TORCH_DTYPES.values()):
            raise PrunelabError(f"dtype {name} is not a precision prunelab runs in",
                                "use torch.float32, torch.bfloat16 or torch.float16")
        return name
    return getattr(torch, _TORCH_DTYPES[check_dtype_name(name)])


def dtype_name(dtype) -> str:
    """The precision name (fp32, bf16, fp16) of a torch dtype; other dtypes by torch's name."""
    text = str(dtype).removeprefix("torch.")
    return next((name for name, full in _TORCH_DTYPES.items() if full == text), text)


def check_dtype(name, device: torch.device | str | None) -> None:
    """Refuse, before anything loads, a precision the device cannot compute in: bf16 on a
    CUDA GPU without bf16 arithmetic (before Ampere), or any dtype whose matrix product the
    device's torch kernels lack. torch 2.13's CPU build runs every prunelab path in bf16 and
    fp16 (slower than fp32 where the CPU has no bf16/fp16 instructions), so the CPU refuses
    none."""
    import torch

    dtype = torch_dtype(name)
    where = torch.device(device) if device is not None else torch.device("cpu")
    label = dtype_name(dtype)
    if (where.type == "cuda" and dtype == torch.bfloat16
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        raise PrunelabError(f"--dtype bf16 was asked for, but the GPU {where} has no bf16 "
                            "arithmetic", "use --dtype fp16 (or fp32) on this GPU")
    if not _can_matmul(dtype, where):
        raise PrunelabError(f"--dtype {label} was asked for, but torch cannot multiply "
                            f"{label} matrices on {where}",
                            "use --dtype fp32, or a device that computes in "
                            f"{label} (--device cuda)")


def _can_matmul(dtype: torch.dtype, device: torch.device) -> bool:
    import torch

    try:
        probe = torch.ones((2, 2), dtype=dtype, device=device)
        return bool(torch.isfinite(probe @ probe).all())
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def resolve_placement(device: str | None, dtype="fp32") -> tuple[torch.device | None,
                                                                  torch.dtype]:
    """A run's device (None: the default placement) and torch dtype, both checked: one line
    when either is unusable here."""
    where = resolve_device(device)
    check_dtype(dtype, where)
    return where, torch_dtype(dtype)
