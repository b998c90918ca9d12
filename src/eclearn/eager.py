"""torch.optim optimizers that start without importing torch's compiler stack.

Every ``torch.optim.Optimizer`` wraps its bookkeeping methods (``add_param_group``,
``zero_grad``, ``state_dict``, ``load_state_dict``) and the ``step`` of most algorithms in
``torch._dynamo`` guards, and those import ``torch._dynamo`` on first use: about 1.1 s in
a fresh process on this project's 2-core machine, paid by the first optimizer built —
most of a small fit. ``ecl.eager_optimizer(torch.optim.Adam)(params, lr=1e-3)`` builds
the same optimizer from a subclass that calls the undecorated methods::

    import eclearn as ecl
    optimizer = ecl.eager_optimizer(torch.optim.Adam)(model.parameters(), lr=1e-3)

The guards only matter while ``torch.compile`` traces the optimizer step; use the plain
class for a compiled step. Update rule, state and ``state_dict`` layout are the parent's
(checkpoints load into either class; ``isinstance(opt, torch.optim.Adam)`` holds), and
step hooks and profiling work as usual. eclearn's own internal fits (the fair
estimators, :class:`~eclearn.ObjectiveWarmStart`, the certificate's refits) use it. Where
the installed torch does not expose the undecorated methods (``__wrapped__``), the class
is returned unchanged: slower to start, same result.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, TypeVar

import torch

__all__ = ["algorithm_name", "eager_optimizer"]

_Opt = TypeVar("_Opt", bound=type[torch.optim.Optimizer])

_BOOKKEEPING = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def _undecorated(cls: type, name: str) -> Any | None:
    """The method's own function below every ``functools.wraps`` decorator (torch's
    dynamo guards, ``no_grad``, and the profiling hook ``Optimizer.__init__`` installs on
    the class), or None when it is not decorated."""
    method = getattr(cls, name, None)
    if method is None or not hasattr(method, "__wrapped__"):
        return None
    return inspect.unwrap(method)


@functools.cache
def eager_optimizer(cls: _Opt) -> _Opt:
    """A subclass of the optimizer class ``cls`` whose construction and steps never
    import ``torch._dynamo`` (see the module docstring); ``cls`` itself when that is not
    possible with the installed torch."""
    methods: dict[str, Any] = {}
    for name in _BOOKKEEPING:
        plain = _undecorated(torch.optim.Optimizer, name)
        if plain is None:
            return cls
        methods[name] = plain
    step = _undecorated(cls, "step")
    if step is None:
        return cls

    def eager_step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        # What both torch decorators do outside compilation: the update under no_grad
        # (an optimizer built with ``differentiable=True`` keeps the graph).
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            return step(self, closure)

    # ``updated=()``: not the parent's ``hooked`` flag, so ``Optimizer.__init__`` installs
    # the step hooks (profiler, ``register_step_post_hook``) on this class as on any.
    methods["step"] = functools.wraps(step, updated=())(eager_step)
    name = f"Eager{cls.__name__}"
    namespace = {**methods, "__module__": __name__, "__qualname__": name, "_eager_parent": cls}
    subclass = type(name, (cls,), namespace)
    globals()[name] = subclass  # picklable by reference, like the parent
    return subclass  # type: ignore[return-value]


def algorithm_name(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer's algorithm as checkpoints record it: ``"Adam"`` for both
    ``torch.optim.Adam`` and its :func:`eager_optimizer` subclass, so a checkpoint written
    with one resumes with the other."""
    cls = type(optimizer)
    return getattr(cls, "_eager_parent", cls).__name__
