"""Hugging Face integrations: transformers' quantizer registry (quant_method "kbit") and PEFT LoRA.

`import kbit` must not import transformers (seconds of start-up, and it is optional), yet
`AutoModelForCausalLM.from_pretrained(..., quantization_config=kbit.QuantConfig(...))` must find
kbit's quantizer. So kbit registers itself right after transformers' quantizer registry
(`transformers.quantizers.auto`) is first imported, through a standard `sys.meta_path` finder that
only watches that one module name; if transformers was imported first, it registers at once.
"""

from __future__ import annotations

import importlib.abc
import sys

REGISTRY_MODULE = "transformers.quantizers.auto"


_registering = False


def register_with_transformers() -> None:
    """Registers kbit's config class and quantizer with transformers (idempotent)."""
    global _registering
    if _registering:  # importing the registry below fires the watcher, which lands here again
        return
    partial = sys.modules.get(__name__ + ".transformers")
    if partial is not None and not getattr(partial, "READY", False):
        return  # kbit's module is importing the registry right now; it registers when it finishes
    _registering = True
    try:
        # First, so that kbit's module imports a complete registry.
        import transformers.quantizers.auto  # noqa: F401

        from .transformers import register

        register()
    finally:
        _registering = False


class _RunAfter(importlib.abc.Loader):
    """Delegates to the real loader, then calls `callback` once the module has executed."""

    def __init__(self, inner, callback):
        self._inner = inner
        self._callback = callback

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        module.__loader__ = self._inner  # later reloads and source look-ups use the real loader
        self._callback()

    def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks and tools
        return getattr(self._inner, name)


class _RegistryWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when transformers' registry module is being imported it wraps the
    real loader so that kbit registers right after the module runs."""

    def find_spec(self, name, path, target=None):
        if name != REGISTRY_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RunAfter(spec.loader, register_with_transformers)
                return spec
        return None


def install() -> None:
    """Registers now if transformers' registry is loaded, else as soon as it is."""
    if REGISTRY_MODULE in sys.modules:
        register_with_transformers()
        return
    if not any(isinstance(f, _RegistryWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegistryWatcher())
