"""Sub-commands of ``pcrlv2-hub``; each module has ``register(subparsers)``.

A module's ``register`` adds its parsers and sets ``handler=`` to a function taking the
parsed arguments; heavy imports happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

from . import benchmark, finetune, hub, prepare, pretrain, volumes

COMMAND_MODULES: list = [hub, finetune, volumes, prepare, pretrain, benchmark]
