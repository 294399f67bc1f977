"""Settings: defaults, bad values named with their variable, secrets never echoed, typos spotted."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import Settings, SettingsError, load_settings, unknown_settings


def test_defaults_are_the_documented_ports_and_paths():
    s = load_settings({})
    assert (s.comfyui_port, s.dashboard_port, s.health_port) == (8188, 8080, 8081)
    assert s.workspace == Path("/workspace")
    assert s.local_redis and s.effective_redis_url == "unix:///run/comfyui-docker/redis.sock"
    assert s.celery_broker_url == "redis+socket:///run/comfyui-docker/redis.sock"
    assert s.dashboard_auth is True


def test_values_come_from_their_variables():
    s = load_settings(
        {
            "WORKSPACE": "ws",
            "COMFYUI_PORT": "9000",
            "DASHBOARD_AUTH": "off",
            "REDIS_URL": "redis://redis.internal:6379/0",
            "COMFYUI_ARGS": "--fast --preview-method 'auto'",
            "HF_TOKEN": "hf_secret",
        }
    )
    assert s.workspace.is_absolute() and s.workspace.name == "ws"
    assert s.comfyui_port == 9000 and s.dashboard_auth is False
    assert not s.local_redis and s.celery_broker_url == "redis://redis.internal:6379/0"
    assert s.comfyui_extra_args() == ["--fast", "--preview-method", "auto"]
    assert "hf_secret" not in repr(s) and s.hf_token.get_secret_value() == "hf_secret"


def test_empty_variables_mean_unset():
    assert load_settings({"COMFYUI_PORT": "", "HF_TOKEN": "  "}).comfyui_port == 8188


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"COMFYUI_PORT": "eighty"}, "COMFYUI_PORT='eighty' is invalid"),
        ({"DASHBOARD_PORT": "70000"}, "DASHBOARD_PORT='70000' is invalid"),
        ({"DASHBOARD_AUTH": "maybe"}, "DASHBOARD_AUTH='maybe' is invalid"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' is invalid: Value error, must be one of"),
        ({"COMFYUI_ARGS": "--x 'unclosed"}, "COMFYUI_ARGS="),
        ({"REDIS_URL": "http://x"}, "REDIS_URL='http://x' is invalid"),
    ],
)
def test_bad_values_name_the_variable(env, named):
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    assert named in str(err.value)
    assert "Fix or unset the variable" in str(err.value)


def test_a_bad_secret_is_named_but_not_echoed():
    # The token itself is what fails: the message names its variable and hides its value.
    with pytest.raises(SettingsError) as err:
        load_settings({"HF_TOKEN": "hf_do_not\u00e9print"})
    assert "HF_TOKEN=<hidden> is invalid" in str(err.value) and "printable ASCII" in str(err.value)
    assert "hf_do_not" not in str(err.value)


def test_typos_of_our_variables_are_pointed_out():
    notes = unknown_settings({"DASHBOARD_PASWORD": "x", "COMFYUI_PROT": "1", "PATH": "/bin", "HOME": "/root"})
    assert notes == [
        "COMFYUI_PROT is not a setting of this image and is ignored; did you mean COMFYUI_PORT?",
        "DASHBOARD_PASWORD is not a setting of this image and is ignored; did you mean DASHBOARD_PASSWORD?",
    ]


def test_every_field_is_described():
    for name, field in Settings.model_fields.items():
        assert field.description, name
