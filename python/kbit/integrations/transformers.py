"""kbit as a transformers quantizer (quant_method "kbit").

Loading a float checkpoint: the model skeleton is built on the meta device with its nn.Linear
layers left as they are; transformers streams the checkpoint one tensor at a time, and each
targeted Linear weight, as it arrives on its device, is quantized and the layer swapped for a kbit
layer (`_Quantize`). At most one float Linear weight is alive at a time, so peak memory stays near
the quantized size. (The meta layers stay float because transformers casts each incoming tensor to
the dtype of the parameter it will fill: a packed uint8 placeholder would turn the weights into
bytes before kbit saw them.)

Loading a quantized checkpoint (kbit's or bitsandbytes', same keys, FORMAT.md): the layers that
the file headers show as quantized become meta kbit layers, and a WeightConverter gathers each
layer's weight with its quant-state entries so that the layer loads them in one go (`_Deserialize`).

After loading, transformers replaces every non-persistent buffer with an empty tensor (it expects
them to be recomputed by `_init_weights`); kbit's quant state lives in such buffers. So the
quantizer takes each layer's buffers out of the layer as soon as it is loaded (transformers then
finds none to replace, and allocates no empty copies of them: on an 8B model those copies would
raise the load peak by ~110 MB, the size of the scales) and puts them back after loading.
"""

from __future__ import annotations

import types
from typing import Optional

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps, WeightConverter
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer

from ..nn import Linear4bit, Linear8bitLt, Params4bit
from ..quantize import find_targets, iter_quantized, quantize_linear
from .checkpoint import StoredLayer, header_dtypes, stored_layers
from .dequantize import dequantize_model
from .hf_config import QuantConfig

METHOD = "kbit"
# Checkpoint key suffixes that belong to one quantized Linear, gathered into its "weight". Longer
# names first: the patterns are tried in order at each position of a key.
QUANTIZED_SUFFIXES = [
    "weight.nested_absmax",
    "weight.nested_quant_map",
    "weight.quant_map",
    "weight.absmax",
    "weight.quant_state.bitsandbytes__nf4",
    "weight.quant_state.bitsandbytes__fp4",
    "weight_format",
    "SCB",
    "weight",
]


def register() -> None:
    """Adds kbit to transformers' quantizer and config registries (idempotent)."""
    if METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(METHOD)(QuantConfig)
    if METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(METHOD)(KbitHfQuantizer)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _first(value):
    return value[0] if isinstance(value, list) else value


class _StatelessOp(ConversionOps):
    # transformers deep-copies the conversion (and so its ops) for every checkpoint key; the op
    # only points at the quantizer, which must not be copied (it holds the loaded layers' buffers).
    def __init__(self, quantizer: "KbitHfQuantizer"):
        self.quantizer = quantizer

    def __deepcopy__(self, memo):
        return self


class _Quantize(_StatelessOp):
    """A float Linear weight arrives: quantize it and swap its layer for a kbit layer."""

    def convert(self, input_dict, model=None, **kwargs):
        out = {}
        for key, value in input_dict.items():
            name = key.rpartition(".")[0]
            layer = self.quantizer.quantize_layer(model, name, _first(value))
            out[key] = layer.weight
            if isinstance(layer, Linear8bitLt):
                out[name + ".SCB"] = layer.SCB
        return out


class _Deserialize(_StatelessOp):
    """A quantized Linear's weight and quant-state entries arrive together: load them into the
    layer. Float tensors that merely match the "weight" pattern (norms, embeddings) pass through."""

    def convert(self, input_dict, model=None, full_layer_name=None, **kwargs):
        tensors = {k: _first(v) for k, v in input_dict.items()}
        name = full_layer_name.rpartition(".")[0]
        module = model.get_submodule(name)
        if not isinstance(module, (Linear4bit, Linear8bitLt)):
            if set(tensors) != {"weight"}:
                raise ValueError(
                    f"kbit: the checkpoint stores {name!r} quantized ({sorted(tensors)}), but in this model "
                    f"it is a {type(module).__name__}"
                )
            return tensors
        missing, unexpected = module.load_state_dict(tensors, strict=False, assign=True)
        if "weight" in missing:
            raise ValueError(f"kbit: the checkpoint has quant state for {name!r} but no {name}.weight")
        self.quantizer.mark_loaded(name, module)
        out = {"weight": module.weight}
        if isinstance(module, Linear8bitLt):
            out["SCB"] = module.SCB
        return out


class KbitHfQuantizer(HfQuantizer):
    """transformers' hooks for loading (and saving) kbit-quantized models."""

    requires_calibration = False

    def __init__(self, quantization_config, **kwargs):
        if not isinstance(quantization_config, QuantConfig):
            quantization_config = QuantConfig.from_quant_config(quantization_config)
        super().__init__(quantization_config, **kwargs)
        self.stored: dict[str, StoredLayer] = {}  # pre-quantized: layers the checkpoint holds quantized
        self.targets: dict[str, list[str]] = {}  # float checkpoint: Linear name -> all its names
        self.loaded: dict[str, dict] = {}  # layer name -> its buffers as loaded

    # ---- checks and placement ----------------------------------------------------------------
    def validate_environment(self, *args, device_map=None, weights_only=True, **kwargs):
        if weights_only is False:
            raise ValueError(
                "kbit: refusing to load with weights_only=False: checkpoints are never unpickled "
                "(use safetensors, or .bin files with weights_only=True)"
            )
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError(
                "kbit: quantized layers cannot be offloaded to disk; remove 'disk' from device_map")

    def update_device_map(self, device_map):
        if device_map is None:
            device_map = {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}
        return device_map

    def param_element_size(self, model, param_name: str, param) -> float:
        if self.param_needs_quantization(model, param_name):
            return 0.5 if self.quantization_config.load_in_4bit else 1.0
        return super().param_element_size(model, param_name, param)

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        return (not self.pre_quantized and param_name.endswith(".weight")
                and param_name[: -len(".weight")] in self.targets)

    # ---- before loading: the skeleton ----------------------------------------------------------
    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        config = self.quantization_config
        if not self.pre_quantized:
            for names in find_targets(model, config):
                for name in names:
                    self.targets[name] = names
            return model
        self.stored = self._stored_layers(model, checkpoint_files)
        for name, info in self.stored.items():
            linear = model.get_submodule(name)
            if not isinstance(linear, nn.Linear):
                raise ValueError(
                    f"kbit: the checkpoint stores {name!r} as a quantized Linear, but in this model it is a "
                    f"{type(linear).__name__}"
                )
            # transformers runs this under a torch.device("meta") context; kbit builds its small
            # code tables on the CPU and moves them, so give it a plain default device.
            with torch.device("cpu"):
                _set_module(model, name, _meta_layer(linear, info, config))
        return model

    def _stored_layers(self, model, checkpoint_files) -> dict[str, StoredLayer]:
        files = list(checkpoint_files or [])
        if files and all(str(f).endswith(".safetensors") for f in files):
            return stored_layers(header_dtypes(files))
        # No headers to read (.bin files or an in-memory state dict): trust the config.
        config = self.quantization_config
        info = StoredLayer(bits=config.bits, quant_type=config.quant_type, double_quant=config.double_quant,
                           storage=config.quant_storage)
        return {names[0]: info for names in find_targets(model, config)}

    def get_quantize_ops(self):
        return _Quantize(self)

    def get_weight_conversions(self):
        if not self.pre_quantized:
            return []
        return [WeightConverter(source_patterns=list(QUANTIZED_SUFFIXES), target_patterns="weight",
                                operations=[_Deserialize(self)])]

    # ---- during loading --------------------------------------------------------------------------
    def quantize_layer(self, model, name: str, weight: torch.Tensor) -> nn.Module:
        """Quantizes the float `weight` of Linear `name` and puts the kbit layer in its place."""
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"kbit: {name!r} is a {type(linear).__name__}, not an nn.Linear")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        layer = quantize_linear(linear, self.quantization_config)
        del linear.weight  # the float weight goes as soon as the loader drops its reference
        for alias in self.targets.get(name, [name]):
            _set_module(model, alias, layer)
        self.mark_loaded(name, layer)
        return layer

    def mark_loaded(self, name: str, layer: nn.Module) -> None:
        layer._is_hf_initialized = True  # transformers must not re-initialize it
        self.loaded[name] = dict(layer._buffers)
        for key in layer._non_persistent_buffers_set:  # held here until loading ends (module docstring)
            layer._buffers[key] = None

    # ---- after loading ---------------------------------------------------------------------------
    def _process_model_after_weight_loading(self, model, **kwargs):
        for name, buffers in self.loaded.items():
            model.get_submodule(name)._buffers.update(buffers)
        if self.stored:  # a quantized checkpoint was loaded: every kbit layer must have come from it
            missing = [n for n, _ in iter_quantized(model) if n not in self.loaded]
            if missing:
                raise ValueError(f"kbit: the checkpoint has no weights for the quantized layers {missing}")
        self.loaded = {}
        config = self.quantization_config
        model.is_loaded_in_4bit = config.load_in_4bit
        model.is_loaded_in_8bit = config.load_in_8bit
        model.is_4bit_serializable = model.is_8bit_serializable = True
        if config.load_in_4bit:  # transformers' own count imports bitsandbytes for 4-bit models
            model.num_parameters = types.MethodType(num_parameters, model)
        # The deserializing conversion must not be reversed on save: kbit layers already write
        # their state dicts in the checkpoint format.
        conversions = getattr(model, "_weight_conversions", None)
        if conversions:
            def ours(c):
                return any(isinstance(op, _Deserialize) for op in getattr(c, "operations", []))

            model._weight_conversions = [c for c in conversions if not ours(c)]
        return model

    def _dequantize(self, model, dtype=None):
        return dequantize_model(model, dtype)

    # ---- capabilities ----------------------------------------------------------------------------
    def is_serializable(self, *args, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


def num_parameters(model: nn.Module, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
    """PreTrainedModel.num_parameters for a kbit 4-bit model: the count transformers gives a
    bitsandbytes one (a packed weight of n bytes holds 2n parameters), without needing bitsandbytes.
    Trainer calls it when it starts training."""
    skip = set()
    if exclude_embeddings:
        skip = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    total = 0
    for name, param in model.named_parameters():
        if name in skip or (only_trainable and not param.requires_grad):
            continue
        total += param.numel() * 2 * param.element_size() if isinstance(param, Params4bit) else param.numel()
    return total


def _meta_layer(linear: nn.Linear, info: StoredLayer, config: QuantConfig) -> nn.Module:
    """An empty kbit layer on the meta device shaped like the stored one; it keeps `linear`'s bias."""
    if info.bits == 4:
        layer = Linear4bit(linear.in_features, linear.out_features, bias=False,
                           compute_dtype=config.compute_dtype, quant_type=info.quant_type,
                           double_quant=info.double_quant, blocksize=config.blocksize,
                           quant_storage=info.storage, device="meta")
    else:
        layer = Linear8bitLt(linear.in_features, linear.out_features, bias=False,
                             threshold=config.llm_int8_threshold, device="meta")
    layer.register_parameter("bias", linear.bias)
    return layer


def attach_quantizer(model: nn.Module, config, pre_quantized: bool = True) -> Optional[KbitHfQuantizer]:
    """Marks a transformers model quantized in memory (kbit.quantize_model) the way from_pretrained
    would: hf_quantizer, config.quantization_config (so save_pretrained writes it), is_quantized,
    quantization_method, is_loaded_in_4bit/8bit. Models without a transformers config are left alone."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return None
    quantizer = KbitHfQuantizer(config, pre_quantized=pre_quantized)
    model.hf_quantizer = quantizer
    model.is_quantized = True
    model.quantization_method = quantizer.quantization_config.quant_method
    quantizer.postprocess_model(model)  # sets config.quantization_config and the model's flags
    return quantizer


register()  # importing this module is enough to make quant_method "kbit" known to transformers
READY = True  # fully imported (see kbit.integrations.register_with_transformers)
