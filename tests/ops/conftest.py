"""Test setup for the attention ops.

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. Triton decides between
compiling and interpreting when a kernel is decorated (at import), from ``TRITON_INTERPRET``: set it
here, before anything imports the kernels. If another test module imported them first (compiled),
the ``triton_ops`` fixture loads a second, interpreted copy of the kernel module.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")



def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _interpreted_copy() -> ModuleType:
    """A fresh copy of eventrec.ops.attention_triton whose kernels are interpreted."""
    name = "eventrec.ops._attention_triton_interpreted"
    if name in sys.modules:
        return sys.modules[name]
    import eventrec.ops.attention_triton as compiled

    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec = importlib.util.spec_from_file_location(name, compiled.__file__)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return module


@pytest.fixture(scope="session")
def triton_ops() -> ModuleType:
    """The Triton kernel module, runnable on DEVICE (compiled on a GPU, interpreted on the CPU)."""
    if not _triton_importable():
        pytest.skip("triton is not importable")
    import eventrec.ops.attention_triton as module

    if not ON_GPU:
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(module._attn_fwd_kernel, InterpretedFunction):
            module = _interpreted_copy()
    module.POISON_OUTPUTS = True
    return module
