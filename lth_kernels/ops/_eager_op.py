"""Custom ops that plain eager calls run without the op dispatch.

A ``torch.library`` custom op with registered autograd costs, per call, a few dispatcher round trips through
Python (autograd kernel, boxing, the backend kernel): on small layers that is several times the GEMM itself, in
forward and again for each backward op. It only matters to tracing (``torch.compile``, export, fake tensors, tensor
subclasses), so :func:`apply` runs the op's own function and autograd formula through one ``autograd.Function``
when the call is plain eager, and the registered op otherwise. Both run the same code: the op's function, its
``setup_context`` and its backward, whose inner ops :func:`call` dispatches the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_BODIES: dict = {}  # custom op -> its Python function
_AUTOGRAD: dict = {}  # custom op -> (setup_context, backward)
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def custom_op(name: str) -> Callable:
    """``torch.library.custom_op(name, mutates_args=())`` that also keeps the function for eager calls."""

    def deco(fn: Callable):
        op = torch.library.custom_op(name, mutates_args=())(fn)
        _BODIES[op] = fn
        return op

    return deco


def register_autograd(op, backward: Callable, setup_context: Callable) -> None:
    op.register_autograd(backward, setup_context=setup_context)
    _AUTOGRAD[op] = (setup_context, backward)


def _eager(args) -> bool:
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    return all(type(a) in _PLAIN for a in args if isinstance(a, torch.Tensor))


class _Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *args):
        *inputs, op = args
        out = _BODIES[op](*inputs)
        setup, backward = _AUTOGRAD[op]
        setup(ctx, tuple(inputs), out)
        ctx.eager, ctx.backward_fn = True, backward
        return out

    @staticmethod
    def backward(ctx, *grads):
        return (*ctx.backward_fn(ctx, *grads), None)  # None: the trailing op argument


def apply(op, *inputs):
    """``op(*inputs)`` with autograd; plain eager calls skip the op dispatch (see the module docstring)."""
    if op in _AUTOGRAD and _eager(inputs):
        return _Function.apply(*inputs, op)
    return op(*inputs)


def call(ctx, op, *args):
    """In a backward formula: ``op(*args)``, or its function directly when the forward ran eagerly."""
    return _BODIES[op](*args) if getattr(ctx, "eager", False) else op(*args)
