"""Engine settings are declared once (herd.engine.config): `LLM(**kwargs)`, `herd replica`,
`herd serve`, `herd generate` take them from there; bad values are ValueErrors naming them;
the GPU KV pool is sized as vLLM sizes it."""

import dataclasses

import pytest

import herd.engine.config as engine_config_module
import herd.engine.llm as llm_module
from herd.cli import build_parser
from herd.cli.config_args import config_values
from herd.cli.gateway_cmds import replica_engine_flags
from herd.cli.server_cmds import check_model_path, engine_config
from herd.engine.backends import BACKENDS
from herd.engine.config import EngineConfig, SchedulerConfig, flat_fields, setting
from herd.engine.errors import InvalidRequestError
from herd.engine.llm import LLM
from herd.engine.runner import gpu_kv_budget
from herd.server.config import ServerConfig

GIB = 1 << 30


def subparser(name: str):
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", ["replica", "serve", "generate", "chat"])
def test_every_setting_is_a_flag_with_its_help_and_default(command):
    help_text = " ".join(subparser(command).format_help().split())
    actions = {a.dest: a for a in subparser(command)._actions}
    for f in flat_fields():
        if f.name == "model" and command != "replica":
            continue  # serve, generate and chat declare --model with their own default
        assert "--" + f.name.replace("_", "-") in help_text, f.name
        assert " ".join(f.metadata["help"].split()) in help_text, f.name
        if command in ("replica", "generate", "chat") and f.default is not dataclasses.MISSING:
            assert actions[f.name].default == f.default, f.name
        if f.metadata["choices"]:
            assert tuple(actions[f.name].choices) == f.metadata["choices"]


def test_replica_flags_build_the_engine_config():
    args = parse(
        "replica", "--model", "m", "--dtype", "float32", "--max-num-seqs", "3",
        "--no-enable-prefix-caching", "--quantization", "int8", "--kv-cache-dtype", "fp8",
        "--attention-backend", "torch", "--port", "0",
    )  # fmt: skip
    config = engine_config(args)
    assert config == EngineConfig(
        model="m",
        dtype="float32",
        quantization="int8",
        kv_cache_dtype="fp8",
        enable_prefix_caching=False,
        attention_backend="torch",
        scheduler=SchedulerConfig(max_num_seqs=3),
    )
    # The server declares only its own settings; none of them repeats an engine setting.
    server = {f.name for f in dataclasses.fields(ServerConfig)} - {"engine"}
    assert server.isdisjoint(f.name for f in flat_fields())
    assert config_values(args, [f for f in dataclasses.fields(ServerConfig)])["port"] == 0


def test_serve_hands_exactly_the_given_engine_flags_to_replicas():
    args = parse("serve", "--dtype", "float32", "--no-enable-prefix-caching", "--max-num-seqs", "8")
    flags = replica_engine_flags(args, "m")
    assert flags == ["--dtype", "float32", "--no-enable-prefix-caching", "--max-num-seqs", "8"]
    replica = engine_config(parse("replica", "--model", "m", *flags))
    assert replica == EngineConfig(
        model="m",
        dtype="float32",
        enable_prefix_caching=False,
        scheduler=SchedulerConfig(max_num_seqs=8),
    )
    assert replica_engine_flags(parse("serve"), "m") == []  # defaults stay the replica's own


def test_a_new_setting_reaches_llm_and_the_cli_with_no_other_edit(monkeypatch, tiny_model_dir):
    @dataclasses.dataclass
    class Extended(EngineConfig):
        new_knob: int = setting(7, "a knob added in a test", (7, 9))

    monkeypatch.setattr(engine_config_module, "EngineConfig", Extended)
    monkeypatch.setattr(llm_module, "EngineConfig", Extended)
    help_text = " ".join(subparser("replica").format_help().split())
    assert "--new-knob {7,9}" in help_text and "a knob added in a test (default: 7)" in help_text
    assert "--new-knob" in subparser("serve").format_help()
    args = parse("replica", "--model", "m", "--new-knob", "9")
    assert engine_config(args).new_knob == 9
    llm = LLM(tiny_model_dir, dtype="float32", new_knob=9)
    assert llm.engine.config.new_knob == 9
    with pytest.raises(ValueError, match="new_knob must be one of 7, 9"):
        Extended(model="m", new_knob=8)


def test_llm_takes_the_flat_names_and_refuses_unknown_ones(tiny_model_dir):
    llm = LLM(tiny_model_dir, dtype="float32", max_num_seqs=3, block_size=4)
    config = llm.engine.config
    assert (config.scheduler.max_num_seqs, config.block_size) == (3, 4)
    assert config.scheduler.max_num_batched_tokens == SchedulerConfig().max_num_batched_tokens
    with pytest.raises(TypeError, match="max_num_seq\\b"):
        LLM(tiny_model_dir, max_num_seq=3)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"dtype": "fp4"}, "dtype"),
        ({"quantization": "int3"}, "quantization"),
        ({"kv_cache_dtype": "int8"}, "kv_cache_dtype"),
        ({"attention_backend": "flash"}, "attention_backend"),
        ({"block_size": 0}, "block_size"),
        ({"num_kv_blocks": 0}, "num_kv_blocks"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_setting(kwargs, name):
    with pytest.raises(ValueError, match=name) as err:
        EngineConfig.from_flat(model="m", **kwargs)
    assert not isinstance(err.value, InvalidRequestError)  # not the HTTP-400 request error


def test_quantization_none_means_no_quantization():
    assert EngineConfig(model="m", quantization="none").quantization is None
    assert EngineConfig(model="m").quantization is None


def test_declared_attention_backends_are_the_real_ones():
    assert engine_config_module.ATTENTION_BACKENDS == ("auto", *BACKENDS)


def test_model_may_be_a_directory_or_a_gguf_file(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    check_model_path(str(tmp_path))
    check_model_path(str(gguf))
    for bad in (tmp_path / "missing", tmp_path / "missing.gguf"):
        with pytest.raises(Exception, match="not a model directory or a .gguf file"):
            check_model_path(str(bad))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(Exception, match="not a model directory"):
        check_model_path(str(tmp_path / "weights.bin"))


def test_gpu_kv_budget_counts_weights_inside_the_utilization():
    # An 80 GiB GPU at 0.9: 72 GiB for herd, of which 16 GiB weights and 2 GiB activations.
    assert gpu_kv_budget(80 * GIB, 64 * GIB, 16 * GIB, 0.9, 2 * GIB) == int(72 * GIB) - 18 * GIB
    # Another process holds memory: never more than is free now, less the activation reserve.
    assert gpu_kv_budget(80 * GIB, 30 * GIB, 16 * GIB, 0.9, 2 * GIB) == 28 * GIB
    with pytest.raises(ValueError, match="gpu_memory_utilization 0.2 leaves no room"):
        gpu_kv_budget(80 * GIB, 64 * GIB, 16 * GIB, 0.2, 2 * GIB)


def test_help_says_what_gpu_memory_utilization_means():
    text = " ".join(subparser("replica").format_help().split())
    assert "share of the GPU's total memory herd may use, weights included" in text


def test_serve_hands_floats_and_strings_on_unchanged():
    flags = replica_engine_flags(
        parse("serve", "--kv-cache-memory", "1e9", "--device", "cuda:1"), "m"
    )
    config = engine_config(parse("replica", "--model", "m", *flags))
    assert (config.kv_cache_memory, config.device) == (1e9, "cuda:1")
