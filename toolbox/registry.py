"""Name -> factory tables for every kind of part, with "did you mean" errors.

A registry is filled by the plugin manager (``toolbox.plugins``); each plugin's hook is
called with its own ``register`` so that a duplicate name can name both plugins.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from toolbox.errors import RecipeError, ToolboxError

# kind -> (hook name, singular noun used in messages)
KINDS: dict[str, tuple[str, str]] = {
    "generators": ("register_generators", "generator"),
    "discriminators": ("register_discriminators", "discriminator"),
    "losses": ("register_losses", "loss"),
    "optimizers": ("register_optimizers", "optimizer"),
    "noise_models": ("register_noise_models", "noise model"),
    "readers": ("register_readers", "reader"),
    "formats": ("register_formats", "image format"),
    "schemes": ("register_schemes", "scheme"),
    "models": ("register_models", "pretrained model"),
    "exporters": ("register_exporters", "export format"),
}

# What the core passes to a factory of each kind (never a recipe option).
INJECTED: dict[str, tuple[str, ...]] = {
    "generators": ("spatial_dims", "in_channels", "out_channels", "noise_level_map"),
    "discriminators": ("spatial_dims", "in_channels"),
    "optimizers": ("params",),
    "schemes": ("parts",),
}

# Recipe keys that belong to the core, never to a factory.
RESERVED_KEYS = {"losses": ("weight",)}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    aliases: tuple[str, ...] = ()
    example: Mapping[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.factory) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def options(self) -> dict[str, Any]:
        """The recipe options of this factory with their defaults (``...`` = required)."""
        params, _ = _parameters(self.factory)
        return {
            name: (... if p.default is inspect.Parameter.empty else p.default)
            for name, p in params.items()
        }


def kind_noun(kind: str) -> str:
    if kind not in KINDS:
        raise ToolboxError(f"Unknown kind '{kind}'. Kinds: {', '.join(KINDS)}")
    return KINDS[kind][1]


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _parameters(factory) -> tuple[dict[str, inspect.Parameter], bool]:
    """Keyword parameters of ``factory`` and whether it takes ``**kwargs``."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: accept anything
        return {}, True
    params = {}
    var_keyword = False
    for name, p in signature.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            params[name] = p
    return params, var_keyword


class Registry:
    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self._aliases: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        # Plugins that failed to load: name -> reason; quoted when a lookup fails.
        self.failed_plugins: dict[str, str] = {}
        # Loaded plugin -> version (written into every run folder).
        self.plugin_versions: dict[str, str] = {}

    # -- filling -----------------------------------------------------------------------
    def registrar(self, kind: str, plugin: str) -> Callable[..., None]:
        def register(name: str, factory: Callable[..., Any], aliases=(), example=None) -> None:
            if not isinstance(name, str) or not name:
                raise ToolboxError(f"plugin '{plugin}' registered a {kind_noun(kind)} without a name")
            if not callable(factory):
                raise ToolboxError(
                    f"plugin '{plugin}' registered {kind_noun(kind)} '{name}' with a factory "
                    "that is not callable"
                )
            for key in (name, *aliases):
                owner = self._owner(kind, key)
                if owner is not None:
                    raise ToolboxError(
                        f"{kind_noun(kind).capitalize()} '{key}' is registered twice: by plugin "
                        f"'{owner}' and by plugin '{plugin}'. Uninstall one of them or ask its "
                        "author to rename the part."
                    )
            component = Component(kind, name, factory, plugin, tuple(aliases), dict(example or {}))
            self._tables[kind][name] = component
            for alias in aliases:
                self._aliases[kind][alias] = name

        return register

    def _owner(self, kind: str, key: str) -> str | None:
        if key in self._tables[kind]:
            return self._tables[kind][key].plugin
        if key in self._aliases[kind]:
            return self._tables[kind][self._aliases[kind][key]].plugin
        return None

    # -- lookup ------------------------------------------------------------------------
    def components(self, kind: str, ordered: bool = False) -> dict[str, Component]:
        """Name -> component, sorted by name (``ordered``: in registration order, built-in
        plugins first)."""
        kind_noun(kind)
        table = self._tables[kind]
        return dict(table) if ordered else dict(sorted(table.items()))

    def get(self, kind: str, name: str, source: str | None = None, path: str | None = None) -> Component:
        noun = kind_noun(kind)
        table = self._tables[kind]
        if not isinstance(name, str):
            raise RecipeError(f"the {noun} type must be a name, got {name!r}", source, path)
        key = self._aliases[kind].get(name, name)
        if key in table:
            return table[key]
        known = sorted(set(table) | set(self._aliases[kind]))
        message = (
            f"Unknown {noun} '{name}'.{did_you_mean(name, known)} "
            f"Available: {', '.join(sorted(table)) or '(none)'}."
        )
        if self.failed_plugins:
            message += " Not loaded: " + ", ".join(
                f"plugin '{p}' ({why})" for p, why in self.failed_plugins.items()
            ) + "."
        raise RecipeError(message, source, path)

    # -- checking and building -----------------------------------------------------------
    def split_spec(self, kind: str, spec, source=None, path=None) -> tuple[Component, dict]:
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, Mapping):
            raise RecipeError(
                f"expected a mapping like {{type: NAME, ...options}}, got {type(spec).__name__}",
                source, path,
            )
        if "type" not in spec:
            raise RecipeError(
                f"missing 'type': name one of the registered {kind} "
                f"({', '.join(self.components(kind)) or 'none'})", source, path,
            )
        component = self.get(kind, spec["type"], source, f"{path}.type" if path else "type")
        reserved = RESERVED_KEYS.get(kind, ())
        options = {k: v for k, v in spec.items() if k != "type" and k not in reserved}
        return component, options

    def takes(self, kind: str, spec, option: str, source=None, path=None) -> bool:
        """Whether the factory ``spec`` names accepts the keyword ``option``."""
        component, _ = self.split_spec(kind, spec, source, path)
        params, var_keyword = _parameters(component.factory)
        return option in params or var_keyword

    def check(self, kind: str, spec, source=None, path=None, injected=()) -> Component:
        """Check a spec against the factory signature without building anything."""
        component, options = self.split_spec(kind, spec, source, path)
        params, var_keyword = _parameters(component.factory)
        where = lambda key: f"{path}.{key}" if path else key  # noqa: E731
        for key in options:
            if not isinstance(key, str):
                raise RecipeError(f"option names must be strings, got {key!r}", source, path)
            if key in injected and key in params:
                raise RecipeError(
                    f"'{key}' is set by toolbox for a {kind_noun(kind)}; remove it from the recipe",
                    source, where(key),
                )
            if key not in params and not var_keyword:
                accepted = [p for p in params if p not in injected]
                raise RecipeError(
                    f"{kind_noun(kind)} '{component.name}' has no option '{key}'."
                    f"{did_you_mean(key, accepted)} Options: {', '.join(accepted) or '(none)'}.",
                    source, where(key),
                )
        for name, p in params.items():
            required = p.default is inspect.Parameter.empty
            if required and name not in options and name not in injected:
                raise RecipeError(
                    f"{kind_noun(kind)} '{component.name}' needs option '{name}'", source, path
                )
        return component

    def build(self, kind: str, spec, source=None, path=None, **injected):
        component = self.check(kind, spec, source, path, injected=tuple(injected))
        _, options = self.split_spec(kind, spec, source, path)
        params, var_keyword = _parameters(component.factory)
        given = {k: v for k, v in injected.items() if k in params}
        try:
            return component.factory(**given, **options)
        except (TypeError, ValueError) as error:
            raise RecipeError(
                f"could not build {kind_noun(kind)} '{component.name}': {error}", source, path
            ) from error
