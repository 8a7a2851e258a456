"""The autoscaler's settings: the `[autoscale]` table of a config file and `herd serve`'s flags
end in one `AutoscaleConfig`; bad values are errors that name the setting."""

import pytest

from herd.cli import CliError, build_parser
from herd.cli.gateway_cmds import _apply_autoscale, _load
from herd.fleet.config import AutoscaleConfig, ConfigError, load_serve_config
from herd.fleet.serve import start_size


def serve_args(*argv):
    return build_parser().parse_args(["serve", *argv])


def test_file_table_then_flags_win(tmp_path):
    path = tmp_path / "herd.toml"
    path.write_text("[autoscale]\nenabled = true\nmax_replicas = 6\nwarm_pool = 1\n")
    args = serve_args("--config", str(path), "--max-replicas", "3", "--min-replicas", "0",
                      "--idle-timeout", "30", "--interruptible")  # fmt: skip
    config = _load(args)
    _apply_autoscale(args, config)
    a = config.autoscale
    assert (a.enabled, a.max_replicas, a.min_replicas, a.warm_pool) == (True, 3, 0, 1)
    assert a.idle_timeout_s == 30.0 and config.fleet.interruptible


def test_flags_alone_turn_it_on_and_defaults_stay():
    args = serve_args("--autoscale", "--scale-down-window", "60", "--cooldown", "5")
    config = _load(args)
    _apply_autoscale(args, config)
    a = config.autoscale
    assert a.enabled and a.scale_down_window_s == 60.0 and a.cooldown_s == 5.0
    assert a.min_replicas == AutoscaleConfig().min_replicas


def test_bad_values_name_the_setting(tmp_path):
    args = serve_args("--autoscale", "--min-replicas", "5", "--max-replicas", "2")
    with pytest.raises(CliError, match="min_replicas"):
        _apply_autoscale(args, _load(args))
    path = tmp_path / "bad.yaml"
    path.write_text("autoscale:\n  max_replica: 3\n")
    with pytest.raises(ConfigError, match="max_replica"):
        load_serve_config(path)


def test_start_size_is_kept_within_the_bounds():
    config = load_serve_config(None)
    config.fleet.replicas = 2
    assert start_size(config) == 2  # not autoscaled: as asked
    config.autoscale = AutoscaleConfig(enabled=True, min_replicas=3, max_replicas=5)
    assert start_size(config) == 3
    config.autoscale = AutoscaleConfig(enabled=True, min_replicas=0, max_replicas=1)
    assert start_size(config) == 1
