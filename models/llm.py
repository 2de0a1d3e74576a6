"""Chat LLM family: one protocol (OpenAI chat completions) for every engine the router can use.

The router talks to its LLM in one shape only: an OpenAI chat-completions request dict
(``{"model", "messages", "max_tokens", "temperature", "seed", "response_format"}``) in, an
OpenAI ``ChatCompletion`` dict out. Two engines answer it:

- on GPU clusters, vLLM through Ray Serve's own ``ray.serve.llm`` (see ``deployments/llm.py``;
  vLLM constrains decoding to the requested JSON schema there);
- everywhere else (CPU CI, dev machines), `TransformersChatEngine` here: the model's chat
  template + ``model.generate``, one request at a time.

**Structured output.** `TransformersChatEngine` validates ``response_format`` but cannot
constrain decoding: it returns whatever the model produced. A real instruct model asked for
JSON usually complies; the random-weight tiny model returns garbage, which is exactly what the
router's fallback path has to survive. Callers must therefore always check a reply with
`parse_json_reply` (also on vLLM: a reply cut off by ``max_tokens`` is invalid JSON too).

**Weights.** Catalogue names (`models.registry`), a local folder, or a hub id; the tiny zoo model
``tiny-llm`` (`build_tiny_llm`: a seeded 2-layer Qwen2 with a byte-level BPE tokenizer and a
ChatML chat template, built in code) is saved with ``save_pretrained`` and loaded through the
same ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` path as e.g. a local copy of
``Qwen/Qwen2.5-1.5B-Instruct``.

torch and transformers are imported lazily: request checks and `parse_json_reply` are cheap to
import (the router and the ingress use them without torch).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from common.errors import InputError
from models.base import LoadedInfo
from models.registry import ModelSpec, Resolved, get_spec, resolve
from models.zoo import SEED

logger = logging.getLogger(__name__)

FAMILY = "llm"
ROLES = ("system", "user", "assistant")
MAX_TOKENS_LIMIT = 4096  # hard upper bound of `max_tokens` for any engine
DEFAULT_MAX_TOKENS = 256
MAX_MESSAGES = 64
MAX_PROMPT_CHARS = 64 * 1024  # sum of message contents, checked before tokenizing
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**63 - 1
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
REQUEST_FIELDS = ("model", "messages", "max_tokens", "temperature", "top_p", "seed",
                  "response_format", "stream", "n", "user")
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# --- the protocol -----------------------------------------------------------------------------

@runtime_checkable
class ChatEngine(Protocol):
    """What `deployments.llm.LLMServer` needs from an engine (it takes the class by injection).

    - ``chat``: an OpenAI chat-completions request dict -> an OpenAI ``ChatCompletion`` dict;
      a bad request raises `ValueError` naming the field.
    - ``info``: what is loaded; ``extra["limits"]`` holds the limits reported by the
      deployment's ``info()`` (``max_tokens``, ``context_length``, ``structured_outputs``).
    - ``check_health``: raise when the engine can't answer (e.g. a 1-token generation).
    """

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def info(self) -> LoadedInfo: ...

    async def check_health(self) -> None: ...


# --- request checks --------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_response_format(response_format: Any) -> dict[str, Any] | None:
    """Validate an OpenAI ``response_format``; returns it (``None`` when absent)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InputError(f"response_format must be an object with a 'type', got "
                         f"{response_format!r:.80}", param="response_format")
    if response_format.get("type") not in RESPONSE_FORMAT_TYPES:
        raise InputError(f"response_format.type must be one of "
                         f"{', '.join(RESPONSE_FORMAT_TYPES)}, got {response_format.get('type')!r}",
                         param="response_format.type")
    if response_format["type"] == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise InputError("response_format.json_schema must be an object with 'name' and "
                             "'schema' when response_format.type is json_schema",
                             param="response_format.json_schema")
        if not isinstance(spec.get("name"), str) or not _SCHEMA_NAME.match(spec["name"]):
            raise InputError("response_format.json_schema.name must be 1-64 characters of "
                             f"a-z, A-Z, 0-9, '_' or '-', got {spec.get('name')!r}",
                             param="response_format.json_schema.name")
        if not isinstance(spec.get("schema"), dict):
            raise InputError("response_format.json_schema.schema must be a JSON Schema object, "
                             f"got {type(spec.get('schema')).__name__}",
                             param="response_format.json_schema.schema")
        if "strict" in spec and not isinstance(spec["strict"], bool):
            raise InputError("response_format.json_schema.strict must be true or false",
                             param="response_format.json_schema.strict")
    return response_format


def check_chat_request(request: Any, *, max_tokens_limit: int = MAX_TOKENS_LIMIT
                       ) -> dict[str, Any]:
    """Validate an OpenAI chat-completions request dict; return a copy with defaults filled in
    (``max_tokens`` 256 capped at the limit, ``temperature`` 1.0, ``top_p`` 1.0).

    ``model`` is optional and informational: a deployment serves one model, and responses name
    the model that answered.

    Raises `InputError` (a `ValueError`) naming the field (`param`) and what is allowed.
    Streaming and ``n > 1`` are not part of the router's protocol and are refused.
    """
    if not isinstance(request, dict):
        raise ValueError(f"request must be an object (OpenAI chat-completions request), got "
                         f"{type(request).__name__}")
    unknown = sorted(set(request) - set(REQUEST_FIELDS))
    if unknown:
        raise InputError(f"unsupported request field(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(REQUEST_FIELDS)}", param=unknown[0],
                         code="unknown_parameter")
    model = request.get("model")
    if model is not None and not isinstance(model, str):
        raise InputError(f"model must be a string, got {type(model).__name__}", param="model")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list of {role, content} objects",
                         param="messages")
    if len(messages) > MAX_MESSAGES:
        raise InputError(f"messages must hold at most {MAX_MESSAGES} messages, got "
                         f"{len(messages)}", param="messages")
    chars = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
            raise InputError(f"messages[{i}] must be an object with 'role' and 'content' "
                             f"(and optionally 'name'), got {message!r:.80}",
                             param=f"messages[{i}]")
        if message.get("role") not in ROLES:
            raise InputError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got "
                             f"{message.get('role')!r}", param=f"messages[{i}].role")
        if not isinstance(message.get("content"), str):
            raise InputError(f"messages[{i}].content must be a string, got "
                             f"{type(message.get('content')).__name__}",
                             param=f"messages[{i}].content")
        chars += len(message["content"])
    if chars > MAX_PROMPT_CHARS:
        raise InputError(f"messages are too long: {chars} characters in all, at most "
                         f"{MAX_PROMPT_CHARS} are allowed", param="messages")
    limit = min(max_tokens_limit, MAX_TOKENS_LIMIT)
    max_tokens = request.get("max_tokens")
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, limit)
    elif not _is_int(max_tokens) or not 1 <= max_tokens <= limit:
        raise InputError(f"max_tokens must be an integer between 1 and {limit}, got "
                         f"{max_tokens!r}", param="max_tokens")
    temperature = request.get("temperature", 1.0)
    if not _is_number(temperature) or not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise InputError(f"temperature must be a number between 0 and {MAX_TEMPERATURE:g}, got "
                         f"{temperature!r}", param="temperature")
    top_p = request.get("top_p", 1.0)
    if not _is_number(top_p) or not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be a number in (0, 1], got {top_p!r}", param="top_p")
    seed = request.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
        raise InputError(f"seed must be an integer between 0 and {MAX_SEED}, got {seed!r}",
                         param="seed")
    if request.get("stream", False) is not False:
        raise InputError("stream must be false: the router's LLM protocol returns whole "
                         "responses", param="stream")
    if request.get("n", 1) != 1 or not _is_int(request.get("n", 1)):
        raise InputError(f"n must be 1, got {request.get('n')!r}", param="n")
    user = request.get("user")
    if user is not None and not isinstance(user, str):
        raise InputError(f"user must be a string, got {type(user).__name__}", param="user")
    checked = dict(request)
    checked.update(messages=[dict(m) for m in messages], max_tokens=max_tokens,
                   temperature=float(temperature), top_p=float(top_p))
    checked["response_format"] = check_response_format(request.get("response_format"))
    if checked["response_format"] is None:
        del checked["response_format"]
    return checked


def json_schema_response_format(name: str, schema: dict[str, Any], *, strict: bool = True
                                ) -> dict[str, Any]:
    """An OpenAI ``response_format`` asking for JSON that follows `schema`."""
    return check_response_format(
        {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                "strict": strict}})


# --- replies ---------------------------------------------------------------------------------

class LLMReplyError(ValueError):
    """An LLM reply the router can't use. `reason`: ``malformed`` (not a ChatCompletion),
    ``empty``, ``not_json``, ``not_object`` or ``schema``; `path`: where the schema failed."""

    def __init__(self, message: str, *, reason: str, path: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.path = path


def reply_text(response: Any) -> str:
    """The assistant text of an OpenAI ``ChatCompletion`` dict (`LLMReplyError` if malformed)."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise LLMReplyError(f"LLM response is not a chat completion: missing {exc}",
                            reason="malformed") from None
    if not isinstance(content, str):
        raise LLMReplyError(f"LLM reply content is {type(content).__name__}, not text",
                            reason="malformed")
    return content


_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


def parse_json_reply(text: Any, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse an LLM reply that should be a JSON object following `schema`.

    Accepts surrounding whitespace and one Markdown code fence (```json ... ```), which
    instruct models add even when asked not to; nothing else is repaired. Returns the object;
    raises `LLMReplyError` (a `ValueError`) saying what is wrong: the router then falls back
    to its earlier stages. `schema` is checked with ``jsonschema`` (its draft from
    ``$schema``, default 2020-12).
    """
    if not isinstance(text, str) or not text.strip():
        raise LLMReplyError("LLM reply is empty", reason="empty")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise LLMReplyError(f"LLM reply is not valid JSON: {exc.msg} at line {exc.lineno} "
                            f"column {exc.colno} (reply starts {body[:40]!r})",
                            reason="not_json") from None
    if not isinstance(value, dict):
        raise LLMReplyError(f"LLM reply must be a JSON object, got {type(value).__name__}",
                            reason="not_object")
    if schema is not None:
        import jsonschema  # heavy (~0.5 s): only replies checked against a schema need it

        validator_cls = jsonschema.validators.validator_for(
            schema, default=jsonschema.Draft202012Validator)
        validator_cls.check_schema(schema)  # a bad schema is our bug: SchemaError, not a reply
        error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(value))
        if error is not None:
            path = "/" + "/".join(str(p) for p in error.absolute_path)
            raise LLMReplyError(f"LLM reply does not follow the schema at {path}: "
                                f"{error.message}", reason="schema", path=path)
    return value


# --- tiny model ------------------------------------------------------------------------------

TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_CONTEXT = 2048
TINY_INIT_RANGE = 0.3
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# ChatML, as Qwen2.5 uses it (without its tool-calling branches).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Words whose byte-level BPE merges the tiny tokenizer learns (so common text is not one token
# per byte); JSON punctuation included, since the router asks for JSON.
_TINY_WORDS = ("the", "image", "photo", "style", "background", "remove", "generate", "upscale",
               "face", "swap", "intent", "prompt", "user", "assistant", "system", "json",
               '{"', '":', '",', '"}', ": ")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the alphabet of byte-level BPE)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def tiny_tokenizer():
    """A byte-level BPE tokenizer (GPT-2/Qwen style) built in code: 256 byte tokens, merges
    that spell `_TINY_WORDS`, ChatML special tokens and chat template. Deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for b in range(256):
        vocab[byte_chars[b]] = len(vocab)
    merges: list[tuple[str, str]] = []

    def merge(left: str, right: str) -> str:
        if left + right not in vocab:
            merges.append((left, right))
            vocab[left + right] = len(vocab)
        return left + right

    for word in _TINY_WORDS:  # the word left to right, then the word after a space
        symbols = [byte_chars[b] for b in word.encode("utf-8")]
        current = symbols[0]
        for nxt in symbols[1:]:
            current = merge(current, nxt)
        merge(byte_chars[ord(" ")], current)
    model = models.BPE(vocab=vocab, merges=merges)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=TINY_CONTEXT,
        clean_up_tokenization_spaces=False,
    )
    for special in SPECIAL_TOKENS:
        if special not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [special]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llm(path: Path) -> None:
    """Tiny Qwen2-architecture chat model (hidden 64, 2 layers, 361-token vocab; ~0.1 M
    parameters) with seeded random weights, saved like a hub model: ``config.json``,
    ``generation_config.json``, ``model.safetensors`` and the tokenizer files."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tokenizer = tiny_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        intermediate_size=2 * TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_KV_HEADS,
        max_position_embeddings=TINY_CONTEXT,
        tie_word_embeddings=True,
        # Wider than the 0.02 default: with it the random model greedily repeats one token
        # ("\n" here) whatever the prompt; at 0.3 its garbage varies with the prompt.
        initializer_range=TINY_INIT_RANGE,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id,
                                               bos_token_id=pad_id, do_sample=False)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


# --- the transformers engine -----------------------------------------------------------------

class TransformersChatEngine:
    """`ChatEngine` on transformers: chat template + ``generate``, one request at a time.

    For CPU tests and dev machines (and a GPU fallback without vLLM): no batching, no
    constrained decoding (``response_format`` is checked, then the model's text is returned
    as is), no streaming. ``temperature == 0`` is greedy decoding (deterministic); otherwise
    sampling, reproducible when ``seed`` is given (the engine reseeds torch under its lock).

    `model`: a catalogue name (`models.registry`); `source`: a local folder or hub id instead
    of the named weights; `allow_fallback`: use the tiny model (loudly) when the weights are
    missing; `gpu_memory_fraction`: on CUDA, cap this process's share of GPU memory
    (``torch.cuda.set_per_process_memory_fraction``) to the replica's GPU fraction.
    """

    def __init__(self, model: str = "tiny-llm", *, source: str | None = None,
                 zoo_dir: str | None = None, allow_fallback: bool = False,
                 device: str | None = None, max_tokens_limit: int = MAX_TOKENS_LIMIT,
                 served_model_name: str | None = None, torch_threads: int | None = None,
                 gpu_memory_fraction: float | None = None):
        import torch

        if not _is_int(max_tokens_limit) or not 1 <= max_tokens_limit <= MAX_TOKENS_LIMIT:
            raise ValueError(f"max_tokens_limit must be an integer between 1 and "
                             f"{MAX_TOKENS_LIMIT}, got {max_tokens_limit!r}")
        if gpu_memory_fraction is not None and not 0 < gpu_memory_fraction <= 1:
            raise ValueError(f"gpu_memory_fraction must be in (0, 1], got "
                             f"{gpu_memory_fraction!r}")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        resolved = self._resolve(get_spec(model, kind=FAMILY, source=source), zoo_dir=zoo_dir,
                                 allow_fallback=allow_fallback)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and gpu_memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction,
                                                       torch.device(self.device))
        self.name = served_model_name or resolved.spec.name
        self.max_tokens_limit = max_tokens_limit
        self._gpu_memory_fraction = gpu_memory_fraction
        self._load(resolved)
        self._thread_lock = threading.Lock()  # generate + reseeding run one at a time
        self._lock: asyncio.Lock | None = None  # created on the serving event loop

    @staticmethod
    def _resolve(spec: ModelSpec, *, zoo_dir: str | None, allow_fallback: bool) -> Resolved:
        def check(location: str) -> None:
            if Path(location).exists():
                if not (Path(location) / "config.json").exists():
                    raise FileNotFoundError(f"no config.json in {location!r}")
                return
            from huggingface_hub import snapshot_download

            # Offline (HF_HUB_OFFLINE=1) and not cached: LocalEntryNotFoundError (an OSError).
            snapshot_download(location, allow_patterns=["config.json"])

        # tiny models and fallbacks are registry models (models/registry.py): one policy
        return resolve(spec, zoo_dir=zoo_dir, allow_fallback=allow_fallback, load_check=check)

    def _load(self, resolved: Resolved) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-shard bars flood the replica logs
        started = time.perf_counter()
        cuda = self.device.startswith("cuda")
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) \
            if cuda else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.location)
        if not self.tokenizer.chat_template:
            raise ValueError(f"the tokenizer in {resolved.location!r} has no chat template; "
                             "use an instruct/chat model")
        self.model = AutoModelForCausalLM.from_pretrained(resolved.location, dtype=dtype)
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self._eos_ids = [int(e) for e in eos]
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else (self._eos_ids[0] if eos else 0)
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0)
                                  or self.tokenizer.model_max_length)
        self._info = LoadedInfo(
            name=resolved.spec.name, family=FAMILY, source=resolved.location,
            tiny=resolved.spec.tiny, device=self.device,
            dtype=str(dtype).removeprefix("torch."), fallback_reason=resolved.fallback_reason,
            extra={"engine": "transformers", "served_model_name": self.name,
                   "parameters": sum(p.numel() for p in self.model.parameters()),
                   "limits": {"max_tokens": self.max_tokens_limit,
                              "context_length": self.context_length,
                              "structured_outputs": False,
                              "gpu_memory_fraction": self._gpu_memory_fraction}})
        logger.info("loaded llm %s from %s on %s/%s in %.2fs", resolved.spec.name,
                    resolved.location, self.device, dtype, time.perf_counter() - started)

    def info(self) -> LoadedInfo:
        return self._info

    # -- serving ------------------------------------------------------------------------------

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one OpenAI chat-completions request (see `check_chat_request`)."""
        checked = check_chat_request(request, max_tokens_limit=self.max_tokens_limit)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # queue here instead of piling threads onto the CPU
            return await asyncio.to_thread(self.chat_sync, checked)

    def chat_sync(self, request: dict[str, Any]) -> dict[str, Any]:
        """The blocking version of `chat` (same checks and response)."""
        import torch

        req = check_chat_request(request, max_tokens_limit=self.max_tokens_limit)
        prompt = self.tokenizer.apply_chat_template(req["messages"], tokenize=False,
                                                    add_generation_prompt=True)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens + req["max_tokens"] > self.context_length:
            raise ValueError(
                f"messages are {prompt_tokens} tokens; with max_tokens {req['max_tokens']} "
                f"that exceeds the model's context of {self.context_length} tokens: shorten "
                "the messages or lower max_tokens")
        sample = req["temperature"] > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": req["max_tokens"], "do_sample": sample,
            "eos_token_id": self._eos_ids, "pad_token_id": self._pad_id,
        }
        if sample:
            kwargs.update(temperature=req["temperature"], top_p=req["top_p"], top_k=0)
        else:  # greedy; don't inherit sampling knobs from the model's generation_config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with self._thread_lock, torch.inference_mode():
            if sample and req.get("seed") is not None:
                torch.manual_seed(req["seed"])
            output = self.model.generate(**inputs, **kwargs)
        generated = output[0, prompt_tokens:].tolist()
        finish_reason = "length"
        for i, token in enumerate(generated):
            if token in self._eos_ids:
                generated, finish_reason = generated[: i + 1], "stop"
                break
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,  # one model per deployment: the one that answered
            "system_fingerprint": f"transformers-{self._info.name}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(generated),
                      "total_tokens": prompt_tokens + len(generated)},
        }

    async def check_health(self) -> None:
        """A real 1-token greedy generation."""
        response = await self.chat({"messages": [{"role": "user", "content": "ping"}],
                                    "max_tokens": 1, "temperature": 0})
        if response["usage"]["completion_tokens"] != 1:
            raise RuntimeError(f"llm health probe generated "
                               f"{response['usage']['completion_tokens']} tokens, expected 1")
