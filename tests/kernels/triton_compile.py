"""Compile a geomim Triton kernel for a CUDA target on any machine (Triton bundles ptxas)."""

from __future__ import annotations

import pytest


def compile_for_gpu(
    kernel, pointer_types: dict[str, str], constexprs: dict[str, object], arch: int = 90
) -> None:
    """Compile `kernel` (jitted, compiled mode) to a cubin for sm_`arch`; skip without a backend.
    First, the kernel as jitted must declare exactly `constexprs` as `tl.constexpr` (a launch
    would otherwise hand them over as runtime arguments, which a str or `tl.arange` bound refuses).

    Arguments named `*_ptr` are pointers (`pointer_types[name]`, "*fp32" unless given), `scale`
    is a float, the other non-constexpr arguments int32 scalars.
    """
    import triton
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    declared = {param.name for param in kernel.params if param.is_constexpr}
    assert declared == set(constexprs), (  # a launch passes constexprs by these names
        f"{kernel.fn.__name__} declares constexpr {sorted(declared)}, the launch passes "
        f"{sorted(constexprs)}"
    )
    if "nvidia" not in backends:
        pytest.skip("this Triton has no CUDA backend")
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types.get(name, "*fp32")
        else:
            signature[name] = "fp32" if name == "scale" else "i32"
    source = ASTSource(kernel, signature, constexprs)
    triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
