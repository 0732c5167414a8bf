"""Loading Qwen3Guard-Stream checkpoints without remote code: the on-disk format of the stand-ins, the head
tensors, label maps in both spellings and the defaults, and every loading failure."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from guard_reward.guards.stream import StreamGuard
from guard_reward.guards.stream_heads import Qwen3StreamGuardModel, StreamCheckpointError
from tests.guards import stream_ckpt

HEADS = (
    "risk_level_category_pre", "risk_level_category_layernorm", "risk_level_head", "category_head",
    "query_risk_level_category_pre", "query_risk_level_category_layernorm", "query_risk_level_head",
    "query_category_head",
)  # fmt: skip
# The documented Stream orders (reference §3.5), written out here rather than imported from the library.
RESPONSE_ORDER = (
    "Violent", "Sexual Content or Sexual Acts", "Suicide & Self-Harm", "Politically Sensitive Topics", "PII",
    "Copyright Violation", "Non-violent Illegal Acts", "Unethical Acts",
)  # fmt: skip


def _all_tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def test_stand_in_has_the_real_on_disk_format():
    folder = stream_ckpt.path("single")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForGuardModel"]
    assert config["model_type"] == "qwen3"
    assert config["auto_map"]["AutoModel"] == "modeling_qwen3_guard.Qwen3ForGuardModel"
    assert not list(folder.glob("*.py")), "the remote code named by auto_map must be absent"
    assert (config["num_risk_level"], config["num_category"]) == (3, 8)
    assert (config["num_query_risk_level"], config["num_query_category"]) == (3, 9)
    assert config["response_risk_level_map"] == {"0": "Safe", "1": "Unsafe", "2": "Controversial"}
    assert config["query_category_map"]["8"] == "Jailbreak"
    inner, hidden = config["guard_inner_size"], config["hidden_size"]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert shapes["risk_level_category_pre.weight"] == (inner, hidden)
    assert shapes["query_category_head.weight"] == (9, inner)
    assert shapes["model.embed_tokens.weight"] == (151936, hidden)
    assert {f"{h}.weight" for h in HEADS} <= set(shapes)
    assert "lm_head.weight" not in shapes


def test_sharded_stand_in_spreads_heads_over_shards():
    folder = stream_ckpt.path("sharded")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = {index["weight_map"][f"{h}.weight"] for h in HEADS}
    assert len(files) == 2 and len(list(folder.glob("model-*.safetensors"))) == 3
    assert not (folder / "model.safetensors").exists()


def test_template_renders_the_stock_qwen3_structure(qwen_tok):
    guard = stream_ckpt.guard("single")
    tok = guard.tokenizer
    user = {"role": "user", "content": "hi"}
    thought = {"role": "assistant", "content": "<think>\nplan\n</think>\n\nYes"}
    assert tok.apply_chat_template([user, thought], tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\nplan\n</think>\n\nYes<|im_end|>\n"
    )
    assert tok.apply_chat_template([user, {"role": "assistant", "content": "Yes"}], tokenize=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\nYes<|im_end|>\n"
    )
    gen = tok.apply_chat_template([user], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert gen == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert (
        tok.encode("user", add_special_tokens=False)
        == [872]
        == qwen_tok.encode("user", add_special_tokens=False)
    )


@pytest.mark.parametrize("kind", ["single", "sharded"])
def test_heads_are_loaded_by_their_checkpoint_names(kind):
    guard = stream_ckpt.guard(kind)
    assert isinstance(guard.model, Qwen3StreamGuardModel)
    tensors = _all_tensors(stream_ckpt.path(kind))
    state = guard.model.state_dict()
    for name in (*[f"{h}.weight" for h in HEADS], "model.norm.weight", "model.layers.1.mlp.up_proj.weight"):
        assert torch.equal(state[name], tensors[name]), name
    assert guard.model.config._attn_implementation == "sdpa"


def test_label_maps_prefixed_spelling_is_used():
    guard = stream_ckpt.guard("single")
    assert guard.category_names == stream_ckpt.CUSTOM_CATEGORIES
    assert guard.maps.risk_levels == ("Safe", "Unsafe", "Controversial")
    assert guard.query_category_names == (*RESPONSE_ORDER, "Jailbreak")


def test_label_maps_plain_spelling_is_used():
    guard = stream_ckpt.guard("sharded")
    config = json.loads((stream_ckpt.path("sharded") / "config.json").read_text())
    assert "response_category_map" not in config and "category_map" in config
    assert guard.category_names == RESPONSE_ORDER
    assert guard.maps.query_risk_levels == ("Safe", "Unsafe", "Controversial")


def test_label_maps_default_when_absent():
    guard = stream_ckpt.guard("nomaps")
    assert guard.category_names == RESPONSE_ORDER
    assert guard.query_category_names == (*RESPONSE_ORDER, "Jailbreak")
    assert guard.maps.risk_levels == guard.maps.query_risk_levels == ("Safe", "Unsafe", "Controversial")


def test_config_map_order_is_respected_when_not_default():
    folder = stream_ckpt.fresh_copy("single", "risk-order")
    config = json.loads((folder / "config.json").read_text())
    config["response_risk_level_map"] = {"0": "Unsafe", "1": "Safe", "2": "Controversial"}
    (folder / "config.json").write_text(json.dumps(config))
    swapped = StreamGuard.from_pretrained(folder, device="cpu", dtype="float32")
    original = stream_ckpt.guard("single")
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there, friend."}]
    a, b = original.score([conv])[0], swapped.score([conv])[0]
    torch.testing.assert_close(b.p_safe, a.p_unsafe)
    torch.testing.assert_close(b.p_unsafe, a.p_safe)


def test_dtype_and_local_folder_stays_offline(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("a local folder must not reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    guard = StreamGuard.from_pretrained(stream_ckpt.path("single"), device="cpu", dtype="bfloat16")
    assert guard.model.risk_level_head.weight.dtype == torch.bfloat16
    assert guard.device == torch.device("cpu")
    assert guard.max_length == 4096


def _rewrite_without(folder, drop: str | None = None, reshape: str | None = None) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = torch.zeros(tensors[reshape].shape[0] + 1, tensors[reshape].shape[1])
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_missing_head_tensor_fails_clearly():
    folder = stream_ckpt.fresh_copy("single", "missing")
    _rewrite_without(folder, drop="query_category_head.weight")
    with pytest.raises(StreamCheckpointError, match=r"missing.*query_category_head\.weight"):
        StreamGuard.from_pretrained(folder, device="cpu")


def test_mis_shaped_head_tensor_fails_clearly():
    folder = stream_ckpt.fresh_copy("single", "shape")
    _rewrite_without(folder, reshape="risk_level_head.weight")
    with pytest.raises(
        StreamCheckpointError, match=r"risk_level_head\.weight has shape \[4, 32\], expected \[3, 32\]"
    ):
        StreamGuard.from_pretrained(folder, device="cpu")


def test_missing_shard_fails_clearly():
    folder = stream_ckpt.fresh_copy("sharded", "noshard")
    (folder / "model-00003-of-00003.safetensors").unlink()
    with pytest.raises(StreamCheckpointError, match=r"model-00003-of-00003\.safetensors is missing"):
        StreamGuard.from_pretrained(folder, device="cpu")


def test_gen_checkpoint_is_not_a_stream_checkpoint(tiny_gen_path):
    with pytest.raises(
        StreamCheckpointError, match=r"not a Qwen3Guard-Stream checkpoint.*Qwen3ForCausalLM.*GenGuard"
    ):
        StreamGuard.from_pretrained(tiny_gen_path, device="cpu")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("guard_inner_size"), r"missing config fields \['guard_inner_size'\]"),
        (lambda c: c.__setitem__("architectures", ["Qwen3Model"]), "not a Qwen3Guard-Stream checkpoint"),
        (lambda c: c.__setitem__("model_type", "llama"), "must be 'qwen3'"),
        (lambda c: c.__setitem__("response_category_map", {"0": "Violent"}), r"indices \[0\].*8 outputs"),
        (
            lambda c: c.__setitem__("query_risk_level_map", {"0": "Safe", "1": "Bad", "2": "Unsafe"}),
            "risk-level",
        ),
        (
            lambda c: c.__setitem__("num_query_category", 10),
            r"query_category_head\.weight has shape \[9, 32\]",
        ),
    ],
)
def test_bad_config_fails_clearly(edit, message):
    folder = stream_ckpt.fresh_copy("nomaps", "config")
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StreamCheckpointError, match=message):
        StreamGuard.from_pretrained(folder, device="cpu")


def test_bad_options_fail_clearly():
    guard = stream_ckpt.guard("single")
    with pytest.raises(ValueError, match="thinking='whole' is not accepted"):
        StreamGuard(guard.model, guard.tokenizer, guard.maps, thinking="whole")
    with pytest.raises(ValueError, match="max_length=5000"):
        StreamGuard(guard.model, guard.tokenizer, guard.maps, max_length=5000)
    with pytest.raises(ValueError, match="token_budget"):
        StreamGuard(guard.model, guard.tokenizer, guard.maps, token_budget=0)


def test_label_maps_direct():
    from guard_reward.guards.stream_heads import label_maps

    base = {"num_risk_level": 3, "num_category": 2, "num_query_risk_level": 3, "num_query_category": 9}
    maps = label_maps({**base, "category_map": {"1": "PII", "0": '"Violent"'}})
    assert maps.categories == ("Violent", "PII")  # index order; stray quotes removed
    with pytest.raises(
        StreamCheckpointError, match="num_category=2 but no response_category_map / category_map"
    ):
        label_maps(base)
    with pytest.raises(StreamCheckpointError, match="keys must be integers"):
        label_maps({**base, "category_map": {"a": "x", "b": "y"}})
