"""The plugin manager: built-in plugins, third-party entry points, and the registry they fill."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
from dataclasses import dataclass, field
from functools import lru_cache

import pluggy

import toolbox.hookspecs as hookspecs
from toolbox.meta import ENTRY_POINT_GROUP, PROJECT, __version__
from toolbox.errors import ToolboxError
from toolbox.registry import KINDS, Registry, did_you_mean

BUILTIN_PLUGINS = (
    "toolbox_plugins.monai_nets",
    "toolbox_plugins.pix2pix",
    "toolbox_plugins.adl",
    "toolbox_plugins.esrgan",
    "toolbox_plugins.dcgan",
    "toolbox_plugins.unconditional_gan",
    "toolbox_plugins.wgan",
    "toolbox_plugins.vgg",
    "toolbox_plugins.resunet",
    "toolbox_plugins.losses",
    "toolbox_plugins.optimizers",
    "toolbox_plugins.noise",
    "toolbox_plugins.lowdose",
    "toolbox_plugins.readers",
    "toolbox_plugins.formats",
    "toolbox_plugins.schemes",
    "toolbox_plugins.self_supervised",
    "toolbox_plugins.pretrained",
    "toolbox_plugins.export_onnx",
    "toolbox_plugins.export_torchscript",
    "toolbox_plugins.export_monai_bundle",
    "toolbox_plugins.export_bioimageio",
)

HOOK_NAMES = {name for name in dir(hookspecs) if name.startswith("register_")}


@dataclass
class PluginInfo:
    name: str
    version: str
    source: str  # "built-in" or the distribution that declares the entry point
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class PluginState:
    manager: pluggy.PluginManager
    registry: Registry
    infos: dict[str, PluginInfo]


def _unknown_hooks(plugin) -> list[str]:
    """Hook-like names on a plugin that are not hooks: a misspelling would be silently ignored."""
    unknown = []
    for attr in dir(plugin):
        if not attr.startswith("register"):
            continue
        value = getattr(plugin, attr, None)
        if callable(value) and hasattr(value, f"{PROJECT}_impl") and attr not in HOOK_NAMES:
            unknown.append(attr)
    return unknown


def _add_plugin(state: PluginState, plugin, name: str, info: PluginInfo) -> None:
    unknown = _unknown_hooks(plugin)
    if unknown:
        hints = "; ".join(f"'{u}'.{did_you_mean(u, HOOK_NAMES)}" for u in unknown)
        raise ToolboxError(f"plugin '{name}' implements unknown hook {hints}")
    state.manager.register(plugin, name=name)
    try:
        state.manager.check_pending()
    except pluggy.PluginValidationError as error:
        state.manager.unregister(name=name)
        raise ToolboxError(f"plugin '{name}' is invalid: {error}") from error
    info.hooks = sorted(
        impl.name for impl in state.manager.get_hookcallers(plugin) or () if impl.name in HOOK_NAMES
    )
    state.infos[name] = info


def _fill_registry(state: PluginState) -> None:
    for kind, (hook_name, _) in KINDS.items():
        caller = getattr(state.manager.hook, hook_name)
        # Call each plugin on its own, oldest first, so that duplicates name both plugins.
        for impl in reversed(caller.get_hookimpls()):
            register = state.registry.registrar(kind, impl.plugin_name)
            try:
                impl.function(register=register)
            except ToolboxError:
                raise
            except Exception as error:  # a third-party bug must not take the CLI down
                if impl.plugin_name in _builtin_names():
                    raise
                state.registry.failed_plugins[impl.plugin_name] = f"{hook_name} failed: {error}"
                state.infos[impl.plugin_name].error = f"{hook_name} failed: {error}"


def _builtin_names() -> set[str]:
    return {module.rsplit(".", 1)[-1] for module in BUILTIN_PLUGINS}


def load_plugins(extra: tuple = (), entry_points: bool = True) -> PluginState:
    """A fresh plugin manager with built-ins, entry-point plugins and ``extra`` plugins."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    state = PluginState(manager, Registry(), {})
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        short = module_name.rsplit(".", 1)[-1]
        _add_plugin(state, module, short, PluginInfo(short, __version__, "built-in"))
    if entry_points:
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            info = PluginInfo(
                entry_point.name,
                dist.version if dist else "?",
                dist.metadata["Name"] if dist else entry_point.value,
            )
            try:
                _add_plugin(state, entry_point.load(), entry_point.name, info)
            except Exception as error:  # reported by name; commands that need it fail later
                info.error = str(error) if isinstance(error, ToolboxError) else (
                    f"failed to import {entry_point.value}: {type(error).__name__}: {error}"
                )
                state.infos[entry_point.name] = info
                state.registry.failed_plugins[entry_point.name] = info.error
    for plugin in extra:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        _add_plugin(state, plugin, name, PluginInfo(name, "", "in-process"))
    _fill_registry(state)
    state.registry.plugin_versions = {name: info.version for name, info in state.infos.items()
                                      if info.error is None}
    return state


_extra_plugins: list = []


@lru_cache(maxsize=1)
def _state() -> PluginState:
    return load_plugins(tuple(_extra_plugins))


def get_state() -> PluginState:
    return _state()


def get_registry() -> Registry:
    return _state().registry


def register_plugin(plugin) -> None:
    """Add an in-process plugin (a module or object with hook implementations)."""
    _extra_plugins.append(plugin)
    _state.cache_clear()


def unregister_plugin(plugin) -> None:
    _extra_plugins.remove(plugin)
    _state.cache_clear()


def plugin_versions() -> dict[str, str]:
    """name -> version of every loaded plugin (written into each run folder)."""
    return dict(get_registry().plugin_versions)
