"""The chat LLM family on the tiny zoo model: offline build loaded like hub weights, the
OpenAI chat-completions protocol, determinism, token accounting, request checks, and the
JSON-reply check the router's fallback relies on."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from common.errors import InputError
from models import zoo
from models.llm import (
    CHAT_TEMPLATE,
    ChatEngine,
    LLMReplyError,
    TransformersChatEngine,
    check_chat_request,
    json_schema_response_format,
    parse_json_reply,
    reply_text,
)

PLAN_SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"enum": ["generate", "remove_background", "upscale", "face_swap"]},
        "prompt": {"type": "string", "minLength": 1},
        "scale": {"type": "integer", "minimum": 2, "maximum": 4},
    },
    "required": ["intent"],
    "additionalProperties": False,
}

ASK = [{"role": "system", "content": "You plan photo edits. Answer with JSON only."},
       {"role": "user", "content": "remove the background of my photo"}]


@pytest.fixture(scope="session")
def llm_zoo(tmp_path_factory) -> Path:
    root = os.environ.get("PHOTOSTUDIO_ZOO_DIR") or tmp_path_factory.mktemp("zoo")
    return zoo.ensure("tiny-llm", root)


@pytest.fixture(scope="module")
def engine(llm_zoo) -> TransformersChatEngine:
    return TransformersChatEngine("tiny-llm", zoo_dir=str(llm_zoo.parent))


def _chat(engine, **request):
    return asyncio.run(engine.chat({"messages": ASK, "temperature": 0, **request}))


# -- the tiny model -------------------------------------------------------------------------

def test_tiny_llm_loads_through_the_auto_classes_like_hub_weights(llm_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {"config.json", "model.safetensors", "tokenizer.json",
            "generation_config.json"} <= {p.name for p in llm_zoo.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(llm_zoo)
    model = AutoModelForCausalLM.from_pretrained(llm_zoo)
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 2
    assert model.config.hidden_size == 64 and model.config.vocab_size == len(tokenizer) < 512
    assert sum(p.numel() for p in model.parameters()) < 200_000
    assert tokenizer.eos_token == "<|im_end|>" == tokenizer.decode([model.config.eos_token_id])
    text = tokenizer.apply_chat_template(ASK[1:], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>user\nremove the background of my photo<|im_end|>\n"
                    "<|im_start|>assistant\n")
    # Byte-level BPE: any text round-trips, and the learned merges shorten common words.
    sample = 'Häßliche 🐱 {"intent": "upscale"}'
    assert tokenizer.decode(tokenizer(sample)["input_ids"]) == sample
    assert tokenizer.tokenize(" the photo") == ["Ġthe", "Ġphoto"]
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_tiny_llm_builds_are_seeded(tmp_path):
    from safetensors.torch import load_file

    a = load_file(zoo.ensure("tiny-llm", tmp_path / "a") / "model.safetensors")
    b = load_file(zoo.ensure("tiny-llm", tmp_path / "b") / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_the_engine_is_a_chat_engine(engine):
    assert isinstance(engine, ChatEngine)
    info = engine.info()
    assert (info.name, info.family, info.tiny, info.device, info.dtype) == (
        "tiny-llm", "llm", True, "cpu", "float32")
    assert info.extra["limits"] == {"max_tokens": 4096, "context_length": 2048,
                                    "structured_outputs": False, "gpu_memory_fraction": None}


def test_a_local_folder_loads_like_real_weights(llm_zoo):
    # The path a downloaded Qwen2.5 folder takes: a registry name pointed at a folder.
    other = TransformersChatEngine("qwen2.5-0.5b-instruct", source=str(llm_zoo))
    assert other.info().name == "qwen2.5-0.5b-instruct" and not other.info().tiny
    assert other.info().source == str(llm_zoo)


def test_missing_weights_fail_unless_fallback_is_allowed(llm_zoo):
    with pytest.raises(RuntimeError, match=r"could not load weights for model "
                                           r"'qwen2.5-1.5b-instruct'.*never falls back"):
        TransformersChatEngine("qwen2.5-1.5b-instruct", zoo_dir=str(llm_zoo.parent))
    fallback = TransformersChatEngine("qwen2.5-1.5b-instruct", zoo_dir=str(llm_zoo.parent),
                                      allow_fallback=True)
    info = fallback.info()
    assert info.name == "tiny-llm" and info.tiny and info.fallback
    assert "Qwen/Qwen2.5-1.5B-Instruct" in info.fallback_reason


# -- the protocol ---------------------------------------------------------------------------

def test_response_is_an_openai_chat_completion(engine):
    from openai.types.chat import ChatCompletion

    response = _chat(engine, max_tokens=16, model="planner")
    parsed = ChatCompletion.model_validate(response)  # the OpenAI SDK's own response type
    assert parsed.object == "chat.completion" and parsed.id.startswith("chatcmpl-")
    assert parsed.model == "tiny-llm"  # the model that answered, not the one asked for
    assert [c.index for c in parsed.choices] == [0]
    assert parsed.choices[0].message.role == "assistant"
    assert parsed.choices[0].finish_reason in ("stop", "length")
    assert reply_text(response) == parsed.choices[0].message.content


def test_usage_counts_the_prompt_and_the_generated_tokens(engine):
    tok = engine.tokenizer
    prompt_ids = tok(tok.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    for max_tokens in (1, 7, 32):
        response = _chat(engine, max_tokens=max_tokens)
        usage = response["usage"]
        assert usage["prompt_tokens"] == len(prompt_ids)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        # The random model doesn't emit <|im_end|> on this prompt: it runs to the limit.
        assert usage["completion_tokens"] == max_tokens
        assert response["choices"][0]["finish_reason"] == "length"


def test_generation_stops_at_eos_and_counts_it(llm_zoo):
    import torch

    engine = TransformersChatEngine("tiny-llm", zoo_dir=str(llm_zoo.parent))
    tok = engine.tokenizer
    ids = tok(tok.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True),
              return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = engine.model.generate(**ids, max_new_tokens=16, do_sample=False,
                                    eos_token_id=engine._eos_ids, pad_token_id=tok.pad_token_id)
    greedy = out[0, ids["input_ids"].shape[1]:].tolist()
    assert len(greedy) == 16
    # Declare a token the greedy answer produces (first) at position k the end of turn: the
    # engine must stop there, report "stop" and count the EOS token (as vLLM does).
    k = next(i for i in range(3, 16) if greedy[i] not in greedy[:i])
    engine._eos_ids = [greedy[k]]
    response = _chat(engine, max_tokens=16)
    assert response["choices"][0]["finish_reason"] == "stop"
    assert response["usage"]["completion_tokens"] == k + 1
    assert reply_text(response) == tok.decode(greedy[: k + 1], skip_special_tokens=True)


def test_greedy_is_deterministic_and_depends_on_the_prompt(engine):
    a, b = _chat(engine, max_tokens=24), _chat(engine, max_tokens=24)
    assert reply_text(a) == reply_text(b) and a["id"] != b["id"]
    other = asyncio.run(engine.chat({"messages": [{"role": "user", "content": "upscale it x4"}],
                                     "max_tokens": 24, "temperature": 0}))
    assert reply_text(other) != reply_text(a)


def test_sampling_is_reproducible_with_a_seed(engine):
    def sample(seed):
        return reply_text(_chat(engine, max_tokens=24, temperature=1.0, seed=seed))

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) == 3


def test_context_overflow_is_a_bad_request(engine):
    long = [{"role": "user", "content": "x" * 3000}]  # ~3000 byte tokens > 2048 context
    with pytest.raises(ValueError, match=r"messages are \d+ tokens; with max_tokens 16 .* "
                                         r"context of 2048 tokens"):
        asyncio.run(engine.chat({"messages": long, "max_tokens": 16}))


def test_max_tokens_limit_of_the_engine(llm_zoo):
    small = TransformersChatEngine("tiny-llm", zoo_dir=str(llm_zoo.parent), max_tokens_limit=8)
    with pytest.raises(ValueError, match=r"max_tokens must be an integer between 1 and 8, got 9"):
        asyncio.run(small.chat({"messages": ASK, "max_tokens": 9}))
    # Unset max_tokens is bounded by the limit too.
    assert asyncio.run(small.chat({"messages": ASK, "temperature": 0}))["usage"][
        "completion_tokens"] <= 8
    with pytest.raises(ValueError, match=r"max_tokens_limit must be an integer between 1 and "
                                         r"4096, got 5000"):
        TransformersChatEngine("tiny-llm", zoo_dir=str(llm_zoo.parent), max_tokens_limit=5000)


def test_check_health_generates_one_token(engine, monkeypatch):
    """The probe is a real generation of exactly one new token, and it fails (raises) when
    the model produces no token or cannot generate at all."""
    real_generate = engine.model.generate
    calls: list[dict] = []

    def generate(**kwargs):
        output = real_generate(**kwargs)
        calls.append({"max_new_tokens": kwargs["max_new_tokens"],
                      "do_sample": kwargs["do_sample"],
                      "new_tokens": output.shape[1] - kwargs["input_ids"].shape[1]})
        return output

    monkeypatch.setattr(engine.model, "generate", generate)
    assert asyncio.run(engine.check_health()) is None
    assert calls == [{"max_new_tokens": 1, "do_sample": False, "new_tokens": 1}]

    # a model that answers with the prompt only: no token, the probe fails
    monkeypatch.setattr(engine.model, "generate", lambda **kwargs: kwargs["input_ids"])
    with pytest.raises(RuntimeError, match="generated 0 tokens, expected 1"):
        asyncio.run(engine.check_health())

    def broken(**kwargs):
        raise RuntimeError("CUDA error: device lost")

    monkeypatch.setattr(engine.model, "generate", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        asyncio.run(engine.check_health())


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ([], r"request must be an object"),
        ({}, r"messages must be a non-empty list"),
        ({"messages": []}, r"messages must be a non-empty list"),
        ({"messages": "hi"}, r"messages must be a non-empty list"),
        ({"messages": [{"role": "tool", "content": "x"}]},
         r"messages\[0\]\.role must be one of system, user, assistant, got 'tool'"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\]\.content must be a string, got "
                                           r"NoneType"),
        ({"messages": [{"role": "user", "content": "a", "tool_calls": []}]},
         r"messages\[0\] must be an object with 'role' and 'content'"),
        ({"messages": [{"role": "user", "content": "a"}] * 65},
         r"messages must hold at most 64 messages, got 65"),
        ({"messages": ASK, "max_tokens": 0}, r"max_tokens must be an integer between 1 and 4096"),
        ({"messages": ASK, "max_tokens": 4097}, r"max_tokens must be .* got 4097"),
        ({"messages": ASK, "max_tokens": 2.5}, r"max_tokens must be an integer"),
        ({"messages": ASK, "max_tokens": True}, r"max_tokens must be an integer"),
        ({"messages": ASK, "temperature": -0.1}, r"temperature must be a number between 0 and 2"),
        ({"messages": ASK, "temperature": "0"}, r"temperature must be a number"),
        ({"messages": ASK, "top_p": 0}, r"top_p must be a number in \(0, 1\]"),
        ({"messages": ASK, "seed": -1}, r"seed must be an integer between 0 and"),
        ({"messages": ASK, "stream": True}, r"stream must be false"),
        ({"messages": ASK, "n": 2}, r"n must be 1, got 2"),
        ({"messages": ASK, "model": 3}, r"model must be a string"),
        ({"messages": ASK, "tools": []}, r"unsupported request field\(s\) tools; allowed: model"),
        ({"messages": ASK, "response_format": "json"}, r"response_format must be an object"),
        ({"messages": ASK, "response_format": {"type": "xml"}},
         r"response_format.type must be one of text, json_object, json_schema, got 'xml'"),
        ({"messages": ASK, "response_format": {"type": "json_schema"}},
         r"response_format.json_schema must be an object"),
        ({"messages": ASK, "response_format": {"type": "json_schema", "json_schema": {
            "name": "a plan", "schema": {}}}}, r"response_format.json_schema.name must be"),
        ({"messages": ASK, "response_format": {"type": "json_schema", "json_schema": {
            "name": "plan", "schema": "{}"}}},
         r"response_format.json_schema.schema must be a JSON Schema object, got str"),
    ],
)
def test_bad_requests_name_the_field(engine, request_, message):
    with pytest.raises(ValueError, match=message):
        asyncio.run(engine.chat(request_))


@pytest.mark.parametrize("request_,param", [
    ({}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": ASK, "max_tokens": 0}, "max_tokens"),
    ({"messages": ASK, "top_p": 0}, "top_p"),
    ({"messages": ASK, "tools": []}, "tools"),
    ({"messages": ASK, "response_format": {"type": "json_schema", "json_schema": {
        "name": "a plan", "schema": {}}}}, "response_format.json_schema.name"),
])
def test_bad_requests_carry_their_field(request_, param):
    with pytest.raises(InputError) as info:
        check_chat_request(request_)
    assert info.value.param == param


def test_a_request_that_is_not_an_object_names_no_field():
    with pytest.raises(ValueError, match="request must be an object") as info:
        check_chat_request([])
    assert not isinstance(info.value, InputError)


def test_check_chat_request_fills_defaults_without_changing_the_input():
    request = {"messages": [{"role": "user", "content": "hi"}], "seed": 3}
    checked = check_chat_request(request)
    assert checked == {"messages": request["messages"], "seed": 3, "max_tokens": 256,
                       "temperature": 1.0, "top_p": 1.0}
    assert request == {"messages": [{"role": "user", "content": "hi"}], "seed": 3}
    assert check_chat_request(request, max_tokens_limit=100)["max_tokens"] == 100


# -- JSON replies (what the router's fallback checks) ------------------------------------------

def test_json_schema_request_gets_unvalidated_garbage_and_the_check_catches_it(engine):
    """The CPU engine can't constrain decoding: asked for a plan, the random model answers
    with text that is no plan, and `parse_json_reply` says so (the router then falls back)."""
    fmt = json_schema_response_format("plan", PLAN_SCHEMA)
    response = _chat(engine, max_tokens=32, response_format=fmt)
    text = reply_text(response)
    assert text.strip()  # it did answer something ...
    with pytest.raises(LLMReplyError) as caught:  # ... that is not a plan
        parse_json_reply(text, PLAN_SCHEMA)
    assert caught.value.reason in {"not_json", "not_object", "schema"}
    assert isinstance(caught.value, ValueError)
    # Sampled answers are garbage too, whatever the seed.
    for seed in range(5):
        sampled = reply_text(_chat(engine, max_tokens=32, temperature=1.0, seed=seed,
                                   response_format={"type": "json_object"}))
        with pytest.raises(LLMReplyError):
            parse_json_reply(sampled, PLAN_SCHEMA)


def test_parse_json_reply_accepts_a_plan_in_the_shapes_models_send():
    plan = {"intent": "upscale", "scale": 4}
    assert parse_json_reply('{"intent": "upscale", "scale": 4}', PLAN_SCHEMA) == plan
    assert parse_json_reply('\n  {"intent": "upscale", "scale": 4}\n', PLAN_SCHEMA) == plan
    assert parse_json_reply('```json\n{"intent": "upscale", "scale": 4}\n```', PLAN_SCHEMA) == plan
    assert parse_json_reply('```\n{"intent": "upscale", "scale": 4}\n```') == plan
    assert parse_json_reply('{"anything": [1, 2]}') == {"anything": [1, 2]}


@pytest.mark.parametrize(
    ("text", "reason", "message"),
    [
        ("", "empty", r"LLM reply is empty"),
        (" \n\t", "empty", r"LLM reply is empty"),
        (None, "empty", r"LLM reply is empty"),
        ('{"intent": "upscale"', "not_json", r"not valid JSON: Expecting ',' delimiter"),
        ("Sure! Here is the plan: {\"intent\": \"upscale\"}", "not_json", r"not valid JSON"),
        ('{"intent": "upscale"} trailing', "not_json", r"Extra data"),
        ("[1, 2]", "not_object", r"must be a JSON object, got list"),
        ("7", "not_object", r"must be a JSON object, got int"),
        ('{"intent": "teleport"}', "schema", r"at /intent: 'teleport' is not one of"),
        ('{"intent": "upscale", "scale": 8}', "schema", r"at /scale: 8 is greater than"),
        ('{"prompt": "a cat"}', "schema", r"at /: 'intent' is a required property"),
        ('{"intent": "generate", "extra": 1}', "schema", r"Additional properties"),
    ],
)
def test_parse_json_reply_refuses_what_is_not_a_plan(text, reason, message):
    with pytest.raises(LLMReplyError, match=message) as caught:
        parse_json_reply(text, PLAN_SCHEMA)
    assert caught.value.reason == reason
    if reason == "schema":
        assert caught.value.path.startswith("/")


def test_a_broken_schema_is_our_bug_not_a_bad_reply():
    import jsonschema

    with pytest.raises(jsonschema.SchemaError):
        parse_json_reply('{"a": 1}', {"type": "no-such-type"})


@pytest.mark.parametrize("response", [{}, {"choices": []}, {"choices": [{"message": {}}]},
                                      {"choices": [{"message": {"content": None}}]}, "text"])
def test_reply_text_of_a_malformed_response(response):
    with pytest.raises(LLMReplyError) as caught:
        reply_text(response)
    assert caught.value.reason == "malformed"
