"""The policy's pre-training pieces: masked LM examples, batching, the class-structured embedding init."""

from __future__ import annotations

import torch

from guard_reward.sandbox.policy import qwen3_sandbox_config
from guard_reward.sandbox.tokenizer import sandbox_tokenizer
from guard_reward.sandbox.word_classes import init_word_classes, word_class_ids
from guard_reward.tiny.training import Example, batch_tensors, lm_example


def test_lm_example_shifts_targets_onto_the_answer():
    e = lm_example([1, 2, 3], [7, 8])
    assert e.ids == [1, 2, 3, 7, 8]
    assert e.labels == ([-100, -100, 7, 8, -100],)


def test_batch_tensors_right_pads():
    ids, mask, labels = batch_tensors([Example([1, 2], ([5, 6],)), Example([3], ([9],))], pad_id=0)
    assert ids.tolist() == [[1, 2], [3, 0]]
    assert mask.tolist() == [[1, 1], [1, 0]]
    assert labels[0].tolist() == [[5, 6], [9, -100]]


def test_word_class_init_pulls_a_class_together():
    from transformers import Qwen3ForCausalLM

    tok = sandbox_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(qwen3_sandbox_config(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                  num_key_value_heads=1, head_dim=16, intermediate_size=64))  # fmt: skip
    classes = word_class_ids(tok)
    emb = model.get_input_embeddings().weight.detach()

    def mean_cos(a: list[int], b: list[int]) -> float:
        x, y = torch.nn.functional.normalize(emb[a], dim=-1), torch.nn.functional.normalize(emb[b], dim=-1)
        return float((x @ y.T).mean())

    before = mean_cos(classes["unsafe"], classes["unsafe"])
    init_word_classes(model, tok, scale=3.0)
    assert mean_cos(classes["unsafe"], classes["unsafe"]) > before + 0.3
    assert mean_cos(classes["unsafe"], classes["unsafe"]) > mean_cos(classes["unsafe"], classes["noun"]) + 0.3
    vocab = tok.get_vocab()
    assert torch.equal(emb[vocab["the"]], emb[vocab[" the"]])  # a line-initial twin starts as its spaced twin


def test_small_world_policy_writes_the_language(small_world):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_world.policy_path)
    assert model.config.architectures == ["Qwen3ForCausalLM"]
    texts = small_world.evaluator.generate(model)
    assert all(small_world.tokenizer.unk_token not in t for t in texts)
    assert sum(len(t.split()) for t in texts) > 0
