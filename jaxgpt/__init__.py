"""jaxgpt: GPT-2 inference in JAX (Flax NNX) with Pallas GPU kernels, checked against a PyTorch oracle.

>>> import jaxgpt
>>> engine = jaxgpt.load_model("gpt2")           # HF cache / hub, else random weights with a warning
>>> p = jaxgpt.predict(engine, "Dobby is")
>>> p.top_k[0].id, p.next_token.text
>>> jaxgpt.generate(engine, ["Dobby is"], max_new_tokens=20)[0].text
>>> small = jaxgpt.load_model("gpt2-xl", dtype="bfloat16", backend="pallas", quantize="int8")  # weight-only int8
"""

from jaxgpt.config import PRESETS, GPTConfig
from jaxgpt.engine import Engine, load_model, load_weights
from jaxgpt.errors import JaxGPTError, UsageError
from jaxgpt.generate import GenerateResult, Generation, generate
from jaxgpt.model import GPT
from jaxgpt.predict import Candidate, Prediction, predict
from jaxgpt.quantize import Scheme, agreement, quantize_state_dict, save_quantized
from jaxgpt.sharding import initialize_distributed, make_mesh, pmap_last_logits, shard
from jaxgpt.tokenizer import decode, encode
from jaxgpt.weights import WeightsError, build_model, load_checkpoint, random_state_dict, save_safetensors
from jaxgpt.xla_flags import use_command_buffers

__version__ = "0.1.0"

__all__ = ["GPT", "GPTConfig", "PRESETS", "Engine", "load_model", "load_weights", "predict", "Prediction",
           "generate", "Generation",
           "GenerateResult", "shard", "make_mesh", "pmap_last_logits", "initialize_distributed",
           "Candidate", "encode", "decode", "build_model", "load_checkpoint", "random_state_dict",
           "save_safetensors", "JaxGPTError", "UsageError", "WeightsError", "Scheme", "quantize_state_dict",
           "save_quantized", "agreement", "use_command_buffers"]
