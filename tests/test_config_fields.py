"""The SFT fields a method's loss would silently ignore are refused when its config is built, for every method that
swaps SFT's loss; and the micro-batch index that seeds per-micro-batch randomness."""

from __future__ import annotations

import math

import pytest

from tests.conftest import cpu_args
from trl_likelihood import DDOConfig, ImplicitPRMConfig, MixCEConfig, SequenceMatchConfig
from trl_likelihood.trainers.micro_batch import MicroBatchIndex

WHOLE_SEQUENCES = {DDOConfig: "DDO scores whole sequences", SequenceMatchConfig: "SequenceMatch builds its own states"}


@pytest.mark.parametrize("config_class", [MixCEConfig, DDOConfig, SequenceMatchConfig])
def test_another_sft_loss_type_is_refused(config_class, tmp_path):
    with pytest.raises(ValueError, match=r"replaces SFT's loss; leave `loss_type='nll'`, got 'dft'"):
        config_class(str(tmp_path), loss_type="dft", **cpu_args())


@pytest.mark.parametrize("config_class", list(WHOLE_SEQUENCES))
@pytest.mark.parametrize("field", ["packing", "padding_free"])
def test_packed_or_padding_free_rows_are_refused_where_whole_sequences_count(config_class, field, tmp_path):
    with pytest.raises(ValueError, match=WHOLE_SEQUENCES[config_class] + ": set `packing=False`"):
        config_class(str(tmp_path), **{field: True}, **cpu_args())


def test_mixce_keeps_sfts_packing(tmp_path):
    assert MixCEConfig(str(tmp_path), packing=True, **cpu_args()).packing  # a per-token loss: packing is fine


def test_micro_batch_index_counts_calls_with_the_same_key():
    index = MicroBatchIndex()
    keys = [("train", 0), ("train", 0), ("train", 0), ("eval", 0), ("train", 1), ("train", 1), ("train", 0)]
    assert [index(key) for key in keys] == [0, 1, 2, 0, 0, 1, 0]


NUMBERS = {  # every float field checked by value, per config
    MixCEConfig: ("eta",),
    ImplicitPRMConfig: ("beta",),
    DDOConfig: ("alpha", "beta", "temperature", "top_p"),
    SequenceMatchConfig: ("noise_prob", "gamma", "chi2_coef", "sm_weight", "rollout_temperature"),
}


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize(
    ("config_class", "field"), [(c, f) for c, fields in NUMBERS.items() for f in fields], ids=lambda x: str(x)
)
def test_non_finite_numbers_are_refused(config_class, field, value, tmp_path):
    """An inf or nan (e.g. `--beta inf` from a YAML) would train NaN or nothing: refused with the field named."""
    with pytest.raises(ValueError, match=rf"`{field}` must be .*, got {value!r}"):
        config_class(str(tmp_path), **{field: value}, **cpu_args())
