"""`--device` means the same in every command."""

import pytest
import torch

from hin.devices import resolve_device


def test_auto_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda:1")


def test_explicit_cuda_without_cuda_says_what_to_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available here; use --device auto"):
        resolve_device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")
