"""The label token tree and the scoring batch layout, checked against hand-worked examples."""

import torch

from guard_reward.guards.gen_scoring import build_label_tree, label_log_probs, make_scoring_batch


def test_tree_for_one_multi_token_label():
    tree = build_label_tree([1, 2], {"Safe": [5], "Controversial": [7, 8, 9], "Unsafe": [6]})
    assert tree.node_ids.tolist() == [7, 8]
    assert tree.node_depth.tolist() == [0, 1]
    assert tree.node_ancestors.tolist() == [[True, False], [True, True]]
    assert tree.label_steps == (((0, 5),), ((0, 7), (1, 8), (2, 9)), ((0, 6),))
    assert tree.n_extra == 4


def test_shared_first_tokens_share_a_node():
    tree = build_label_tree([1], {"a": [3, 4], "b": [3, 5], "c": [6]})
    assert tree.node_ids.tolist() == [3]
    assert tree.label_steps == (((0, 3), (1, 4)), ((0, 3), (1, 5)), ((0, 6),))


def test_scoring_batch_layout():
    tree = build_label_tree([1, 2], {"Safe": [5], "Controversial": [7, 8, 9], "Unsafe": [6]})
    batch = make_scoring_batch([[10, 11, 12], [13]], tree, pad_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 1, 2, 7, 8], [0, 0, 13, 1, 2, 7, 8]]
    assert batch.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    # linear positions for prompt + prefix; tree nodes continue from the prefix by depth
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert batch.position_ids[1, 2:].tolist() == [0, 1, 2, 3, 4]
    m = batch.attention_mask[:, 0]
    # row 1: real queries never see the two left pads
    assert not m[1, 2:, :2].any()
    # the second node (depth 1) sees the first node and itself, the first node not the second
    assert m[0, 6, 5] and m[0, 6, 6] and not m[0, 5, 6]
    # both nodes see the whole prompt and prefix
    assert m[0, 5, :5].all() and m[1, 5, 2:5].all()
    # padding queries attend to themselves only
    assert m[1, 0].tolist() == [True] + [False] * 6
    assert m[1, 1].tolist() == [False, True] + [False] * 5


def test_label_log_probs_against_a_loop():
    torch.manual_seed(0)
    tree = build_label_tree([1], {"Safe": [5], "Controversial": [7, 8, 9], "Unsafe": [6]})
    logits = torch.randn(2, 3, 12)
    got = label_log_probs(logits, tree)
    logp = torch.log_softmax(logits, -1)
    for b in range(2):
        assert torch.isclose(got[b, 0], logp[b, 0, 5])
        assert torch.isclose(got[b, 1], logp[b, 0, 7] + logp[b, 1, 8] + logp[b, 2, 9])
        assert torch.isclose(got[b, 2], logp[b, 0, 6])
