"""kbit.QuantConfig: defaults, BitsAndBytesConfig names, serialization, validation."""

import json

import pytest
import torch

from kbit.config import QuantConfig


def test_defaults():
    c = QuantConfig(load_in_4bit=True)
    assert (c.quant_type, c.double_quant, c.compute_dtype, c.blocksize) == ("nf4", True, torch.bfloat16, 64)
    assert c.quant_storage == torch.uint8 and c.llm_int8_threshold == 6.0 and c.skip_modules is None
    assert c.quant_method == "kbit" and c.bits == 4
    assert QuantConfig(load_in_8bit=True).bits == 8


def test_bitsandbytes_names():
    c = QuantConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False,
                    bnb_4bit_compute_dtype="float16", bnb_4bit_quant_storage="torch.bfloat16",
                    bnb_4bit_blocksize=128, llm_int8_skip_modules=["mlp"])
    assert (c.quant_type, c.double_quant, c.compute_dtype) == ("fp4", False, torch.float16)
    assert c.quant_storage == torch.bfloat16 and c.blocksize == 128 and c.skip_modules == ["mlp"]
    # The same value under both names is fine; different values are not.
    assert QuantConfig(load_in_4bit=True, compute_dtype=torch.float16, bnb_4bit_compute_dtype="float16")
    with pytest.raises(ValueError, match="conflicts"):
        QuantConfig(load_in_4bit=True, quant_type="fp4", bnb_4bit_quant_type="nf4")


def test_reads_a_bitsandbytes_config_dict():
    transformers = pytest.importorskip("transformers")
    b = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16,
                                        llm_int8_skip_modules=["lm_head"])
    c = QuantConfig.from_dict(b.to_dict())
    assert c.load_in_4bit and not c.load_in_8bit and c.double_quant and c.compute_dtype == torch.bfloat16
    assert c.skip_modules == ["lm_head"]
    b8 = transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=4.0)
    c8 = QuantConfig.from_dict(b8.to_dict())
    assert c8.load_in_8bit and c8.llm_int8_threshold == 4.0


def test_dict_round_trip_is_json():
    c = QuantConfig(load_in_4bit=True, quant_type="fp4", compute_dtype=None, quant_storage=torch.bfloat16,
                    skip_modules=("a", "b.c"))
    d = json.loads(json.dumps(c.to_dict()))
    assert d["quant_method"] == "kbit" and d["compute_dtype"] is None and d["quant_storage"] == "bfloat16"
    assert QuantConfig.from_dict(d) == c
    assert QuantConfig.from_dict(json.loads(c.to_json_string())) == c
    assert QuantConfig.from_dict(d) != QuantConfig(load_in_4bit=True)


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one"),
    ({"load_in_4bit": True, "load_in_8bit": True}, "both"),
    ({"load_in_4bit": True, "quant_type": "int4"}, "quant_type"),
    ({"load_in_4bit": True, "blocksize": 48}, "blocksize"),
    ({"load_in_4bit": True, "compute_dtype": torch.int8}, "compute_dtype"),
    ({"load_in_4bit": True, "compute_dtype": "float17"}, "compute_dtype"),
    ({"load_in_4bit": True, "quant_storage": torch.float64}, "quant_storage"),
    ({"load_in_8bit": True, "llm_int8_threshold": -1}, "threshold"),
    ({"load_in_8bit": True, "skip_modules": "lm_head"}, "skip_modules"),
    ({"load_in_4bit": True, "double_quant": "yes"}, "double_quant"),
    ({"load_in_4bit": True, "bnb_4bit_typo": 1}, "unknown option"),
    ({"load_in_8bit": True, "llm_int8_enable_fp32_cpu_offload": True}, "not supported"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_from_dict_rejects_other_methods():
    with pytest.raises(ValueError, match="gptq"):
        QuantConfig.from_dict({"quant_method": "gptq", "load_in_4bit": True})
