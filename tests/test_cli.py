"""The command lines: every boolean flag of every script works bare (--x) and negated (--no-x), as tyro makes them,
also those whose default depends on the device (None until the run starts); old args.json files still resume."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import tyro

import customize_motion
import eval_reward
import eval_videos
import sac_clip
import sac_env_reward
import sac_sds

SCRIPTS = {"sac_env_reward.py": sac_env_reward.Args, "sac_clip.py": sac_clip.Args, "sac_sds.py": sac_sds.Args,
           "eval_videos.py": eval_videos.EvalArgs, "eval_reward.py": eval_reward.Args,
           "customize_motion.py": customize_motion.Args}


def boolean_fields(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if hints[f.name] in (bool, typing.Optional[bool])]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_boolean_flag_works_bare_and_negated(script):
    cls = SCRIPTS[script]
    required = [a for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING for a in ("--" + f.name.replace("_", "-"), "x")]
    names = boolean_fields(cls)
    assert names, script
    for name in names:
        flag = name.replace("_", "-")
        assert getattr(tyro.cli(cls, args=[*required, f"--{flag}"]), name) is True, flag
        assert getattr(tyro.cli(cls, args=[*required, f"--no-{flag}"]), name) is False, flag


@pytest.mark.parametrize("module, field", [(sac_sds, "reward_compile"), (sac_sds, "reward_overlap"),
                                           (sac_clip, "reward_overlap")])
def test_device_dependent_flags_default_to_none_and_say_so(module, field, capsys):
    """--reward-compile / --reward-overlap: None when not given (decided on the device at the start: on CUDA), and
    --help says so; an args.json with null, true or false (runs before this change wrote any of them) resumes."""
    assert getattr(tyro.cli(module.Args, args=[]), field) is None
    with pytest.raises(SystemExit):
        tyro.cli(module.Args, args=["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    flag = field.replace("_", "-")
    assert f"--{flag}, --no-{flag}" in help_text and "(default: on CUDA)" in help_text
    hint = typing.get_type_hints(module.Args)[field]
    assert [module.conform(hint, v) for v in (None, True, False)] == [None, True, False]
    with pytest.raises(TypeError):
        module.conform(hint, "yes")
