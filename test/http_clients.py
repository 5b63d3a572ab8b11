"""Real clients of Perch's HTTP API, for test/http.test.ts: the `openai` SDK, the `ollama` library, and replays of
what Frigate's llamacpp and ollama providers (frigate/genai/plugins/llama_cpp.py, ollama.py) and Home Assistant's
Ollama integration (homeassistant/components/ollama/entity.py, config_flow.py) send. Prints one JSON object of
results.

usage: http_clients.py BASE_URL TOKEN JPEG
"""

import base64
import json
import sys

import httpx
import ollama
import openai

base, token, jpeg = sys.argv[1], sys.argv[2], sys.argv[3]
image_b64 = base64.b64encode(open(jpeg, "rb").read()).decode()
data_url = "data:image/jpeg;base64," + image_b64
out = {}


def record(name, fn):
    try:
        out[name] = fn()
    except openai.APIStatusError as e:
        out[name] = {"error": {"status": e.status_code, "body": e.body}}
    except ollama.ResponseError as e:
        out[name] = {"error": {"status": e.status_code, "message": e.error}}


# ---- the openai SDK
oa = openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0)
ask = [{"role": "user", "content": "Say hello."}]
record("openai_models", lambda: [m.id for m in oa.models.list().data])


def openai_chat():
    r = oa.chat.completions.create(model="perch", messages=ask, max_tokens=8, temperature=0)
    c = r.choices[0]
    return {"text": c.message.content, "finish": c.finish_reason, "usage": r.usage.model_dump()}


def openai_stream():
    parts, finish, usage = [], None, None
    for chunk in oa.chat.completions.create(
        model="perch", messages=ask, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.usage:
            usage = chunk.usage.model_dump()
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    return {"text": "".join(parts), "finish": finish, "usage": usage}


def openai_image():
    r = oa.chat.completions.create(
        model="perch",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
                ],
            }
        ],
        max_tokens=4,
        temperature=0,
    )
    return {"text": r.choices[0].message.content, "usage": r.usage.model_dump()}


record("openai_chat", openai_chat)
record("openai_stream", openai_stream)
record("openai_image", openai_image)
record(
    "openai_unknown_model",
    lambda: oa.chat.completions.create(model="gpt-4o", messages=ask, max_tokens=2).model_dump(),
)
record(
    "openai_bad_token",
    lambda: openai.OpenAI(base_url=base + "/v1", api_key="wrong-token", max_retries=0)
    .chat.completions.create(model="perch", messages=ask, max_tokens=2)
    .model_dump(),
)
LIGHTS = {
    "type": "function",
    "function": {
        "name": "turn_on",
        "description": "Turns on a light",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    },
}


def openai_tools():
    # Declared tools go into the prompt; a conversation with a call and its result goes back to the model.
    r = oa.chat.completions.create(model="perch", messages=ask, max_tokens=2, temperature=0, tools=[LIGHTS])
    history = [
        {"role": "user", "content": "Turn on the kitchen light."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "turn_on", "arguments": '{"name": "kitchen"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"success": true}'},
    ]
    r2 = oa.chat.completions.create(model="perch", messages=history, max_tokens=2, temperature=0, tools=[LIGHTS])
    return {
        "prompt_tokens": r.usage.prompt_tokens,
        "finish": r.choices[0].finish_reason,
        "history_prompt_tokens": r2.usage.prompt_tokens,
        "history_finish": r2.choices[0].finish_reason,
    }


record("openai_tools", openai_tools)
SWITCH = {
    "type": "function",
    "function": {
        "name": "switch_light",
        "description": "Switches a light",
        "parameters": {
            "type": "object",
            "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
            "required": ["room", "on"],
        },
    },
}


def openai_tool_required():
    # tool_choice "required" and a named function: one call, decoded under the tool's schema.
    calls = []
    for seed, choice in [(1, "required"), (2, "required"), (3, {"type": "function", "function": {"name": "switch_light"}})]:
        r = oa.chat.completions.create(
            model="perch", messages=ask, max_tokens=64, temperature=1, seed=seed, tools=[SWITCH], tool_choice=choice
        )
        c = r.choices[0]
        calls.append(
            {
                "finish": c.finish_reason,
                "calls": [{"name": t.function.name, "arguments": json.loads(t.function.arguments)} for t in c.message.tool_calls or []],
            }
        )
    return calls


record("openai_tool_required", openai_tool_required)
record(
    "openai_bad_tool_args",
    lambda: oa.chat.completions.create(
        model="perch",
        messages=[
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "turn_on", "arguments": "not json"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "ok"},
        ],
        max_tokens=2,
        tools=[LIGHTS],
    ).model_dump(),
)

# ---- the ollama library, as Home Assistant's integration calls it
ol = ollama.Client(host=base, headers={"Authorization": "Bearer " + token})
record("ollama_list", lambda: [m.model for m in ol.list().models])
record("ollama_ps", lambda: [m.model for m in ol.ps().models])
record("ollama_show", lambda: ol.show("perch").capabilities)


def ollama_chat():
    r = ol.chat(model="perch:latest", messages=ask, stream=False, options={"num_predict": 8, "temperature": 0})
    return {
        "text": r.message.content,
        "done": r.done,
        "reason": r.done_reason,
        "eval_count": r.eval_count,
        "prompt_eval_count": r.prompt_eval_count,
    }


def ollama_stream_ha():
    # Home Assistant's conversation call: streaming, num_ctx, keep_alive -1, no tools (sent as []), think off.
    parts, last = [], None
    for chunk in ol.chat(
        model="perch:latest",
        messages=[{"role": "system", "content": "You are a voice assistant."}] + ask,
        tools=None,
        stream=True,
        keep_alive=-1,
        options={"num_ctx": 8192, "num_predict": 8, "temperature": 0},
        think=False,
    ):
        parts.append(chunk.message.content or "")
        last = chunk
    return {"text": "".join(parts), "done": last.done, "chunks": len(parts)}


def ollama_image():
    r = ol.chat(
        model="perch",
        messages=[{"role": "user", "content": "What is in this image?", "images": [jpeg]}],
        stream=False,
        options={"num_predict": 4, "temperature": 0},
    )
    return {"text": r.message.content, "prompt_eval_count": r.prompt_eval_count}


def ollama_tools_ha():
    # Home Assistant with "Control Home Assistant" on: its tools, a call it made, the result (no tool_name).
    parts, last = [], None
    for chunk in ol.chat(
        model="perch:latest",
        messages=[
            {"role": "user", "content": "Turn on the kitchen light."},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "turn_on", "arguments": {"name": "kitchen"}}}]},
            {"role": "tool", "content": json.dumps({"data": {"success": True}, "error": None})},
        ],
        tools=[LIGHTS],
        stream=True,
        keep_alive=-1,
        options={"num_ctx": 8192, "num_predict": 4, "temperature": 0},
    ):
        parts.append(chunk.message.content or "")
        last = chunk
    return {"done": last.done, "prompt_eval_count": last.prompt_eval_count}


# A JSON-schema reply, as a client asks for one: decoded under the schema, so it parses and validates at once,
# random weights or not (sampled, several seeds).
DOOR = {
    "type": "object",
    "properties": {
        "door": {"type": "string", "enum": ["front", "garage", "back"]},
        "open": {"type": "boolean"},
        "minutes": {"type": "integer", "minimum": 0, "maximum": 600},
    },
    "required": ["door", "open", "minutes"],
    "additionalProperties": False,
}


def openai_json_schema():
    replies = []
    for seed in range(1, 6):
        r = oa.chat.completions.create(
            model="perch",
            messages=[{"role": "user", "content": "Which door is open?"}],
            max_tokens=96,
            temperature=1,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "door", "schema": DOOR, "strict": True}},
        )
        replies.append(r.choices[0].message.content)
    return replies


def ollama_format():
    replies = []
    for seed in range(1, 6):
        r = ol.chat(
            model="perch",
            messages=[{"role": "user", "content": "Which door is open?"}],
            format=DOOR,
            stream=False,
            options={"num_predict": 96, "temperature": 1, "seed": seed},
        )
        replies.append(r.message.content)
    return replies


record("openai_json_schema", openai_json_schema)
record("ollama_format", ollama_format)
record("ollama_chat", ollama_chat)
record("ollama_tools_ha", ollama_tools_ha)
record("ollama_stream_ha", ollama_stream_ha)
record("ollama_image", ollama_image)
record("ollama_unknown_model", lambda: ol.chat(model="llama3.2:latest", messages=ask, stream=False).model_dump())


# ---- Frigate's ollama provider (frigate/genai/plugins/ollama.py), replayed with the ollama library: it checks the
# model with show(), then describes with generate(): the prompt, the snapshot's bytes, its LOCAL_OPTIMIZED_OPTIONS
# (repeat_penalty and presence_penalty, which Perch does not use), and for review summaries a JSON schema as format.
def frigate_ollama():
    frigate = ollama.Client(host=base, timeout=120, headers={"Authorization": "Bearer " + token})
    show = frigate.show("perch")
    options = {"options": {"temperature": 0.5, "repeat_penalty": 1.05, "presence_penalty": 0.3}}
    if "thinking" in (show.capabilities or []):
        options["think"] = False  # Frigate turns thinking off for descriptions of a model that has it
    image = open(jpeg, "rb").read()
    desc = frigate.generate("perch", "Describe the person in the image.", images=[image], **options)
    with_text = frigate.generate("perch", "Describe the person in the image.", **options)
    review = [
        frigate.generate("perch", "Summarise the activity.", images=[image], format=DOOR, options={"temperature": 1, "seed": seed, "num_predict": 96})
        for seed in (1, 2, 3)
    ]
    return {
        "capabilities": show.capabilities,
        "response": desc["response"],
        "done": desc.get("done"),
        "done_reason": desc.get("done_reason"),
        "eval_count": desc.get("eval_count"),
        "prompt_eval_count": desc.get("prompt_eval_count"),
        "text_prompt_eval_count": with_text.get("prompt_eval_count"),
        "review": [r["response"] for r in review],
    }


def ollama_generate_stream():
    # The library's generate, streamed and whole, greedy: the same text; a system prompt lengthens the prompt.
    parts, last = [], None
    for chunk in ol.generate(model="perch", prompt="Say hello.", stream=True, options={"num_predict": 8, "temperature": 0}):
        parts.append(chunk.response or "")
        last = chunk
    whole = ol.generate(model="perch", prompt="Say hello.", options={"num_predict": 8, "temperature": 0})
    # An empty system prompt means none (not the configured one): a given one adds its tokens.
    no_system = ol.generate(model="perch", prompt="Say hello.", system="", options={"num_predict": 1})
    system = ol.generate(model="perch", prompt="Say hello.", system="You watch a garden.", options={"num_predict": 1})
    empty = ol.generate(model="perch", prompt="")
    return {
        "text": "".join(parts),
        "chunks": len(parts),
        "done": last.done,
        "eval_count": last.eval_count,
        "prompt_eval_count": last.prompt_eval_count,
        "whole": whole.response,
        "whole_eval_count": whole.eval_count,
        "no_system_prompt_eval_count": no_system.prompt_eval_count,
        "system_prompt_eval_count": system.prompt_eval_count,
        "empty": {"done": empty.done, "done_reason": empty.done_reason, "response": empty.response},
    }


record("frigate_ollama", frigate_ollama)
record("ollama_generate_stream", ollama_generate_stream)
record("ollama_generate_raw", lambda: ol.generate(model="perch", prompt="hi", raw=True).model_dump())
record("ollama_generate_context", lambda: ol.generate(model="perch", prompt="hi", context=[1, 2, 3]).model_dump())
record("ollama_generate_unknown_model", lambda: ol.generate(model="llava:7b", prompt="hi").model_dump())

# ---- Frigate's llamacpp provider, replayed: discovery, then a description with an image and provider_options
hx = httpx.Client(base_url=base, headers={"Authorization": "Bearer " + token}, timeout=120)
models = hx.get("/v1/models").json()
props = hx.get("/props", params={"model": "perch"}).json()
out["frigate_discovery"] = {
    "ids": [m["id"] for m in models["data"]],
    "modalities": models["data"][0]["architecture"]["input_modalities"],
    "n_ctx": props["default_generation_settings"]["n_ctx"],
    "media_marker": props["media_marker"],
    "thinking_toggle": "enable_thinking" in props["chat_template"],
}
desc = hx.post(
    "/v1/chat/completions",
    json={
        "model": "perch",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Describe the scene."}, {"type": "image_url", "image_url": {"url": data_url}}],
            }
        ],
        "context_size": 16000,
        "max_tokens": 4,
    },
)
out["frigate_description"] = {"status": desc.status_code, "content": desc.json()["choices"][0]["message"]["content"]}
probe = hx.post(
    "/v1/chat/completions",
    json={
        "model": "perch",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "."}, {"type": "image_url", "image_url": {"url": data_url}}]}],
        "max_tokens": 1,
    },
)
out["frigate_probe_prompt_tokens"] = probe.json()["usage"]["prompt_tokens"]

print(json.dumps(out))
