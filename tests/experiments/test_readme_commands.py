"""Every command the README shows is accepted by what it runs.

Researchers copy these commands; a renamed config key, group option or flag would otherwise surface
only when someone runs them. Each ``python experiments/<script>.py`` command's overrides are parsed
as Hydra parses them, every value of a sweep (``-m a,b,c``) is composed once, and the job's config
is resolved (``results_name`` and other interpolations included). Each ``python -m
experiments.<tool>`` / ``benchmarks.<bench>`` command's arguments go through the tool's own
argument parser, which is stopped there.
"""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
PLACEHOLDER = "<each>"  # the README's "run this once per scores name"


def _expand(text: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace(f'"${name}"', variables[name]).replace(f"${name}", variables[name])
    return text


def readme_commands() -> list[tuple[str, list[str]]]:
    """``(script, overrides)`` of every experiments command in the README's bash blocks, shell
    variables set in the same block expanded and ``&&`` chains split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        variables: dict[str, str] = {}
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            if match := re.fullmatch(r"(\w+)=(.+)", line):
                variables[match.group(1)] = _expand(
                    " ".join(shlex.split(match.group(2))), variables
                )
            for part in _expand(line, variables).split("&&"):
                if match := re.match(r"\s*python (experiments/\w+\.py)(.*)", part):
                    tokens = shlex.split(match.group(2).replace(PLACEHOLDER, "name"))
                    commands.append((match.group(1), [t for t in tokens if t != "-m"]))
    return commands


def one_run_per_sweep_value(overrides: list[str]) -> list[list[str]]:
    """The overrides with every sweep at its first value, then each other value in turn."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [
        [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in parsed
    ]
    first = [options[0] for options in choices]
    runs = [first]
    for position, options in enumerate(choices):
        runs += [first[:position] + [option] + first[position + 1 :] for option in options[1:]]
    return runs


def multirun_overrides(overrides: list[str]) -> list[str] | None:
    """The overrides a sweep's multirun composes its own config with, before any job: every sweep
    left out, so a group's default option stands in for the swept ones (e.g. ``unlearner=ft``
    under ``unlearner=rl,salun unlearner.batches=mixed``, which has no ``batches``); ``None``
    when nothing is swept."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    if not any(o.is_sweep_override() for o in parsed):
        return None
    return [o.input_line for o in parsed if not o.is_sweep_override()]


COMMANDS = readme_commands()


def test_the_readme_shows_commands_for_every_kind_of_experiment():
    scripts = {script for script, _ in COMMANDS}
    assert len(COMMANDS) > 30
    assert {"experiments/train.py", "experiments/score.py", "experiments/unlearning.py"} <= scripts


@pytest.mark.parametrize(("script", "overrides"), COMMANDS, ids=lambda v: str(v)[:60])
def test_readme_command_composes_and_resolves(script, overrides):
    assert not [token for token in overrides if "$" in token and "${" not in token]
    name = re.search(r'config_name="(\w+)"', (REPO / script).read_text()).group(1)
    if (multirun := multirun_overrides(overrides)) is not None:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            compose(name, overrides=multirun)  # Hydra's own config of the multirun
    for run in one_run_per_sweep_value(overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(name, overrides=run, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        job = OmegaConf.to_container(cfg, resolve=False)
        del job["hydra"]
        OmegaConf.to_container(OmegaConf.create(job), resolve=True, throw_on_missing=True)


def module_commands() -> list[tuple[str, list[str]]]:
    """``(module, arguments)`` of every ``python -m experiments.<tool>`` or ``benchmarks.<bench>``
    command in the README, in its bash blocks or inline in its prose."""
    pattern = r"python -m ((?:experiments|benchmarks)\.\w++)(?!\*)(.*)"
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            for part in line.split(" #")[0].split("&&"):
                if match := re.match(r"\s*" + pattern, part):
                    commands.append((match.group(1), shlex.split(match.group(2))))
    for inline in re.findall(r"`(python -m (?:experiments|benchmarks)\.\w+[^`]*)`", README):
        if match := re.match(pattern, " ".join(inline.split())):  # not `benchmarks.bench_*`
            commands.append((match.group(1), shlex.split(match.group(2))))
    return commands


MODULE_COMMANDS = module_commands()


class _ParsedError(Exception):
    """Raised once a tool's parser accepted its arguments: nothing after parsing runs."""


def test_the_readme_shows_tool_and_benchmark_commands():
    modules = {module for module, _ in MODULE_COMMANDS}
    assert len(MODULE_COMMANDS) > 30 and len(modules) > 15


@pytest.mark.parametrize(("module", "arguments"), MODULE_COMMANDS, ids=lambda v: str(v)[:60])
def test_readme_tool_command_parses(module, arguments, monkeypatch):
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        parse(parser, args, namespace)
        raise _ParsedError

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr("sys.argv", [module, *arguments])
    with pytest.raises(_ParsedError):
        importlib.import_module(module).main()
