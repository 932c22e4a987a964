"""The registry and plugin manager: lookups, signature checks, duplicates, bad plugins."""

from __future__ import annotations

import types

import pytest
import torch

import toolbox
from toolbox.errors import RecipeError, ToolboxError
from toolbox.plugins import load_plugins


def test_unknown_name_suggests_the_closest():
    with pytest.raises(RecipeError) as info:
        toolbox.build("generators", {"type": "unte"})
    message = str(info.value)
    assert "Unknown generator 'unte'. Did you mean 'unet'?" in message
    assert "Available:" in message and "pix2pix_unet" in message


def test_aliases_resolve_to_the_same_factory():
    assert toolbox.components("losses")["l1"].aliases == ("mae",)
    loss = toolbox.build("losses", {"type": "mae"})
    assert isinstance(loss, torch.nn.L1Loss)


def test_bad_option_is_reported_before_building_with_file_and_key():
    from toolbox.plugins import get_registry

    with pytest.raises(RecipeError) as info:
        get_registry().build("generators", {"type": "unet", "featurs": [1]}, "r.yaml", "generator",
                             spatial_dims=2, in_channels=1, out_channels=1)
    message = str(info.value)
    assert message.startswith("r.yaml, key 'generator.featurs'")
    assert "Did you mean 'features'?" in message


def test_injected_arguments_may_not_be_set_by_the_recipe():
    from toolbox.plugins import get_registry

    with pytest.raises(RecipeError, match="set by toolbox"):
        get_registry().check("generators", {"type": "unet", "spatial_dims": 3}, "r.yaml",
                             "generator", injected=("spatial_dims", "in_channels", "out_channels"))


def test_missing_required_option():
    def needs_sigma(sigma):
        return sigma

    plugin = types.SimpleNamespace()

    @toolbox.hookimpl
    def register_noise_models(register):
        register("needs_sigma", needs_sigma)

    plugin.register_noise_models = register_noise_models
    state = load_plugins(extra=(plugin,), entry_points=False)
    with pytest.raises(RecipeError, match="needs option 'sigma'"):
        state.registry.check("noise_models", {"type": "needs_sigma"})


def test_bad_option_value_becomes_a_recipe_error():
    with pytest.raises(RecipeError, match="could not build generator 'pix2pix_unet'.*norm"):
        toolbox.build("generators", {"type": "pix2pix_unet", "norm": "group"},
                      spatial_dims=2, in_channels=1, out_channels=1)


def test_plugin_registered_for_one_test(plugin_for_one_test):
    class Halve(torch.nn.Module):
        def forward(self, prediction, target):
            return (prediction - target).abs().mean() / 2

    class Plugin:
        @toolbox.hookimpl
        def register_losses(self, register):
            register("halved_l1", Halve)

    plugin_for_one_test(Plugin())
    assert "halved_l1" in toolbox.components("losses")
    loss = toolbox.build("losses", {"type": "halved_l1"})
    assert loss(torch.ones(1), torch.zeros(1)).item() == pytest.approx(0.5)


def test_plugin_is_gone_after_its_test():
    assert "halved_l1" not in toolbox.components("losses")


def test_duplicate_name_names_both_plugins():
    class Clash:
        @toolbox.hookimpl
        def register_losses(self, register):
            register("l1", torch.nn.L1Loss)

    with pytest.raises(ToolboxError) as info:
        load_plugins(extra=(Clash(),), entry_points=False)
    assert "'losses'" in str(info.value) and "'Clash'" in str(info.value)


def test_misspelled_hook_is_an_error_at_load():
    class Typo:
        @toolbox.hookimpl
        def register_generator(self, register):  # missing "s"
            pass

    with pytest.raises(ToolboxError, match="unknown hook 'register_generator'. Did you mean 'register_generators'"):
        load_plugins(extra=(Typo(),), entry_points=False)


def test_every_builtin_plugin_uses_only_public_hooks():
    state = load_plugins(entry_points=False)
    builtins = {n: i for n, i in state.infos.items() if i.source == "built-in"}
    assert set(builtins) >= {"pix2pix", "losses", "optimizers", "noise", "readers", "schemes"}
    for info in builtins.values():
        assert info.hooks and all(h.startswith("register_") for h in info.hooks)


def test_every_hook_is_documented_and_registered_somewhere():
    from toolbox import hookspecs
    from toolbox.registry import KINDS

    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert len(doc.strip()) > 40, f"{name} needs a docstring that states its contract"
    assert {h for h, _ in KINDS.values()} | {"register_commands"} == set(hooks)
    for kind in KINDS:
        assert toolbox.components(kind), f"no built-in {kind}"


def test_plugin_commands_join_the_cli(plugin_for_one_test, capsys):
    from toolbox.cli import main

    def hello(args):
        print(f"hello {args.who}")
        return 0

    class Commands:
        @toolbox.hookimpl
        def register_commands(self, cli):
            parser = cli.add_parser("hello", help="say hello")
            parser.add_argument("who")
            parser.set_defaults(func=hello)

    plugin_for_one_test(Commands())
    assert main(["hello", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"
