"""GGUF files written in the test with `gguf.GGUFWriter`: each tensor type decodes as the gguf
package's reference `dequantize` does; a tiny random Llama converted the way llama.cpp converts
(q/k rows permuted) generates what transformers generates from the original; a SentencePiece
vocabulary tokenizes as the sentencepiece library does; unsupported inputs are clear errors."""

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from herd import LLM, SamplingParams
from herd.engine.errors import ModelLoadError
from herd.engine.tokenizer import Tokenizer
from herd.model.config import ModelConfig
from herd.model.demo import CORPUS, SPECIAL_TOKENS
from herd.model.gguf_file import find_gguf
from herd.model.gguf_weights import gguf_tensors

Q = gguf.GGMLQuantizationType
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: transformers' q/k rows -> llama.cpp's."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_name(hf: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_NAMES[module]}.{kind}"


def write_gguf(path: Path, meta, tensors=(), tokenizer=None) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in meta.items():
        getattr(w, f"add_{key}")(value)
    for name, array, raw_type in tensors:
        if raw_type is None:
            w.add_tensor(name, array)
        else:
            w.add_tensor(name, array, raw_dtype=raw_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def demo_to_gguf(model_dir: Path, out: Path, permute: bool = True) -> Path:
    """A minimal llama.cpp-style conversion of a demo model directory (float32 tensors)."""
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [t for t, _ in vocab] + [t for t, i in sorted(added.items(), key=lambda kv: kv[1])]
    types = [3 if t in SPECIAL_TOKENS else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    template = Tokenizer(model_dir).hf.chat_template
    meta = {
        "block_count": cfg["num_hidden_layers"],
        "context_length": cfg["max_position_embeddings"],
        "embedding_length": cfg["hidden_size"],
        "feed_forward_length": cfg["intermediate_size"],
        "head_count": cfg["num_attention_heads"],
        "head_count_kv": cfg["num_key_value_heads"],
        "key_length": cfg["head_dim"],
        "value_length": cfg["head_dim"],
        "rope_freq_base": ModelConfig.from_dir(model_dir).rope.theta,
        "layer_norm_rms_eps": cfg["rms_norm_eps"],
        "file_type": 0,
        "tokenizer_model": "gpt2",
        "tokenizer_pre": "gpt-2",
        "token_list": tokens,
        "token_types": types,
        "token_merges": merges,
        "bos_token_id": cfg["bos_token_id"],
        "eos_token_id": cfg["eos_token_id"][-1],
        "add_bos_token": True,
        "chat_template": template,
    }
    weights = load_file(str(model_dir / "model.safetensors"))
    tensors = []
    for name, w in weights.items():
        if permute and "q_proj" in name:
            w = llama_cpp_permute(w, cfg["num_attention_heads"])
        elif permute and "k_proj" in name:
            w = llama_cpp_permute(w, cfg["num_key_value_heads"])
        tensors.append((gguf_name(name), np.ascontiguousarray(w, dtype=np.float32), None))
    return write_gguf(out, meta, tensors)


@pytest.fixture(scope="module")
def demo_gguf(tiny_model_dir: Path, tmp_path_factory) -> Path:
    return demo_to_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "demo.gguf")


def random_blocks(type_name: str, rows: int, cols: int, rng) -> tuple[np.ndarray, Q]:
    """Raw bytes of a `type_name` tensor: random codes, with sane float16 scales."""
    qtype = getattr(Q, type_name)
    if type_name in ("F32", "F16"):
        return rng.standard_normal((rows, cols)).astype(
            type_name.lower().replace("f", "float")
        ), None
    if type_name == "BF16":
        return gguf.quants.quantize(
            rng.standard_normal((rows, cols)).astype(np.float32), qtype
        ), qtype
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows * cols // block, nbytes), dtype=np.uint8)
    scale_at = {"Q6_K": [nbytes - 2]}.get(
        type_name, [0, 2] if "_1" in type_name or "K" in type_name else [0]
    )
    for at in scale_at:
        raw[:, at : at + 2] = (
            rng.uniform(-0.05, 0.05, (raw.shape[0], 1)).astype(np.float16).view(np.uint8)
        )
    return raw.reshape(rows, -1), qtype


@pytest.mark.parametrize("type_name", TYPES)
def test_each_tensor_type_decodes_as_the_gguf_reference(type_name, tmp_path):
    rng = np.random.default_rng(TYPES.index(type_name))
    rows, cols = 8, 512
    raw, qtype = random_blocks(type_name, rows, cols, rng)
    path = write_gguf(tmp_path / "t.gguf", {}, [("blk.0.attn_v.weight", raw, qtype)])
    cfg = ModelConfig.from_dict(
        dict(
            vocab_size=8,
            hidden_size=64,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
        )
    )
    ((name, tensor),) = list(gguf_tensors(path, cfg))
    assert (name, tensor.type_name, tensor.shape) == (
        "model.layers.0.self_attn.v_proj.weight",
        type_name,
        (rows, cols),
    )
    reader = gguf.GGUFReader(str(path))
    expected = gguf.quants.dequantize(reader.tensors[0].data, reader.tensors[0].tensor_type)
    got = tensor.to_float()
    assert got.dtype == torch.float32 and got.shape == (rows, cols)
    assert np.isfinite(expected).all() and np.abs(expected).max() > 0
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.float32).reshape(rows, cols))


def test_raw_quantized_blocks_are_exposed_for_int8_loaders(tmp_path):
    """Q8_0 rows stay bytes (34 per 32 values: float16 scale + int8 codes) until decoded."""
    w = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    path = write_gguf(
        tmp_path / "q.gguf", {}, [("blk.0.attn_v.weight", gguf.quants.quantize(w, Q.Q8_0), Q.Q8_0)]
    )
    cfg = ModelConfig.from_dict(
        dict(
            vocab_size=8,
            hidden_size=64,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
        )
    )
    ((_, t),) = list(gguf_tensors(path, cfg))
    assert t.is_quantized and t.raw().dtype == torch.uint8 and t.raw().shape == (6, 2 * 34)
    scales = t.raw().reshape(6, 2, 34)[..., :2].contiguous().view(torch.float16).float()
    codes = t.raw().reshape(6, 2, 34)[..., 2:].contiguous().view(torch.int8).float()
    torch.testing.assert_close((scales * codes).reshape(6, 64), t.to_float())
    torch.testing.assert_close(t.to_float(), torch.from_numpy(w), atol=0.05, rtol=0.02)


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    raw, qtype = np.zeros((4, 84), dtype=np.uint8), Q.Q2_K  # 256 values per 84-byte block
    path = write_gguf(tmp_path / "q2.gguf", {}, [("blk.0.ffn_up.weight", raw, qtype)])
    cfg = ModelConfig.from_dict(
        dict(
            vocab_size=8,
            hidden_size=256,
            intermediate_size=4,
            num_hidden_layers=1,
            num_attention_heads=1,
        )
    )
    with pytest.raises(ModelLoadError, match=r"blk\.0\.ffn_up\.weight has GGUF type Q2_K"):
        list(gguf_tensors(path, cfg))


def test_config_from_llama_metadata(demo_gguf, tiny_model_dir):
    ours = ModelConfig.from_dir(demo_gguf)
    ref = ModelConfig.from_dir(tiny_model_dir)
    for field in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
    ):
        assert getattr(ours, field) == getattr(ref, field), field
    assert ours.rope == ref.rope and ours.rms_norm_eps == pytest.approx(ref.rms_norm_eps)
    assert ours.torch_dtype == "float32" and ours.eos_token_ids == [ref.eos_token_ids[-1]]


def test_llama31_rope_freqs_give_the_llama3_scaling(tmp_path):
    """Llama 3.1 GGUFs keep the RoPE scaling only as `rope_freqs`, the per-frequency divisors
    llama.cpp's converter computes (transcribed here from convert_hf_to_gguf.py)."""
    import math

    head_dim, theta, factor, low, high, old = 128, 500000.0, 8.0, 1.0, 4.0, 8192
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    divisors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            divisors.append(1)
        elif wavelen > old / low:
            divisors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    meta = {
        "block_count": 1,
        "context_length": 131072,
        "embedding_length": head_dim,
        "feed_forward_length": 8,
        "head_count": 1,
        "rope_freq_base": theta,
    }
    tensors = [
        ("token_embd.weight", np.zeros((4, head_dim), np.float32), None),
        ("rope_freqs.weight", np.array(divisors, dtype=np.float32), None),
    ]
    rope = ModelConfig.from_dir(write_gguf(tmp_path / "l31.gguf", meta, tensors)).rope
    assert (rope.rope_type, rope.theta, rope.factor) == ("llama3", theta, factor)
    assert (rope.low_freq_factor, rope.high_freq_factor) == (low, high)
    assert rope.original_max_position_embeddings == old
    tensors[1] = ("rope_freqs.weight", np.linspace(1, 3, head_dim // 2, dtype=np.float32), None)
    with pytest.raises(ModelLoadError, match="matches no llama3 RoPE scaling"):
        ModelConfig.from_dir(write_gguf(tmp_path / "odd.gguf", meta, tensors))


def test_plan_reads_a_gguf_as_it_reads_the_directory(demo_gguf, tiny_model_dir):
    from herd.plan.model_config import load_model_config

    ours, ref = load_model_config(str(demo_gguf)), load_model_config(str(tiny_model_dir))
    assert ours.name == "demo" and ours.param_counts() == ref.param_counts()
    assert ours.max_model_len == ref.max_model_len


def test_directory_holding_one_gguf_is_a_model(demo_gguf, tmp_path):
    assert find_gguf(demo_gguf.parent) == demo_gguf
    (tmp_path / "a.gguf").write_bytes(demo_gguf.read_bytes())
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="several .gguf files"):
        ModelConfig.from_dir(tmp_path)
    with pytest.raises(ModelLoadError, match="cannot read .* as GGUF"):
        ModelConfig.from_dir(tmp_path / "b.gguf")


def _greedy_transformers(model_dir: Path, prompt_ids: list[int], n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = hf.generate(
        torch.tensor([prompt_ids]),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt_ids) :].tolist()


def test_llama_cpp_conversion_generates_as_transformers(demo_gguf, tiny_model_dir, tmp_path):
    """The q/k rows llama.cpp permutes for its RoPE are put back: greedy tokens match
    transformers on the original checkpoint, and a file whose rows were not permuted (what
    herd would see if it skipped the undo) does not."""
    prompt = "The quick brown fox jumps over the lazy dog. herd serves Llama models"
    ids = Tokenizer(tiny_model_dir).encode(prompt)
    assert Tokenizer(demo_gguf).encode(prompt) == ids
    expected = _greedy_transformers(tiny_model_dir, ids, 24)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    got = LLM(str(demo_gguf), dtype="float32").generate([ids], params)[0].outputs[0].token_ids
    assert list(got) == expected
    unpermuted = demo_to_gguf(tiny_model_dir, tmp_path / "unpermuted.gguf", permute=False)
    wrong = LLM(str(unpermuted), dtype="float32").generate([ids], params)[0].outputs[0].token_ids
    assert list(wrong) != expected


def test_gguf_chat_template_and_specials_match_the_directory(demo_gguf, tiny_model_dir):
    ours, ref = Tokenizer(demo_gguf), Tokenizer(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, world!"},
    ]
    assert ours.apply_chat_template(messages) == ref.apply_chat_template(messages)
    text = "<|start_header_id|>user<|end_header_id|> café 東京 😀  x"
    assert ours.encode(text) == ref.encode(text)
    assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text))


# ---- a `llama` (SentencePiece) vocabulary -----------------------------------------------------

SP_TEXTS = [
    "Hello, world! How are you today?",
    "  two leading spaces and   inner runs\tand a tab",
    "Numbers 0 1 2 3 and 1000, unicode café naïve 東京 😀 Ωmega.",
    "trailing space and newline \n",
]


@pytest.fixture(scope="module")
def sentencepiece_gguf(tmp_path_factory) -> tuple[Path, object]:
    """A BPE SentencePiece model (Llama 2's kind: byte fallback, no normalisation) trained here,
    its pieces, scores and types written as GGUF `llama` tokenizer metadata."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    (d / "corpus.txt").write_text((CORPUS + "\n") * 20)
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"),
        model_prefix=str(d / "sp"),
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(d / "sp.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]

    def kind(i: int) -> int:
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        return 6 if sp.is_byte(i) else 1

    meta = {
        "tokenizer_model": "llama",
        "token_list": pieces,
        "token_scores": [sp.get_score(i) for i in range(len(pieces))],
        "token_types": [kind(i) for i in range(len(pieces))],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "unk_token_id": 0,
        "add_bos_token": True,
    }
    return write_gguf(d / "sp.gguf", meta), sp


@pytest.mark.parametrize("text", SP_TEXTS)
def test_sentencepiece_vocabulary_encodes_as_sentencepiece(sentencepiece_gguf, text):
    path, sp = sentencepiece_gguf
    tok = Tokenizer(path)
    ids = tok.encode(text)
    assert ids == [1, *sp.encode(text)]
    assert tok.decode(ids) == sp.decode(sp.encode(text))


def test_sentencepiece_control_tokens_in_text_are_whole(sentencepiece_gguf):
    """As llama.cpp parses them: whole, and the text after one starts a new piece."""
    path, sp = sentencepiece_gguf
    tok = Tokenizer(path)
    assert tok.encode("<s>Hello</s>") == [1, 1, *sp.encode("Hello"), 2]
    assert tok.decode(tok.encode("<s>Hello</s>")) == "Hello"


def test_unknown_pre_tokenizer_is_a_clear_error(tmp_path):
    meta = {
        "tokenizer_model": "gpt2",
        "tokenizer_pre": "no-such-pre",
        "token_list": ["a", "b"],
        "token_merges": [],
    }
    path = write_gguf(tmp_path / "pre.gguf", meta)
    with pytest.raises(ModelLoadError, match="pre-tokenizer 'no-such-pre' is not supported"):
        Tokenizer(path)
