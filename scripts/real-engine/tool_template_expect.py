#!/usr/bin/env python3
"""Print the expected values of gateway-policy/tests/tool_template.rs.

Renders the test conversations the way vLLM (0.32) renders a chat request:
the request validated by vLLM's own request model (`ChatCompletionRequest`),
the tools dumped back by it (`tool.model_dump()`), the messages through
vLLM's own `_parse_chat_message_content` (content format "string") and
`_postprocess_messages` (tool-call arguments parsed into dicts), then
transformers' `apply_chat_template(conversation, tools=..., chat_template=...,
add_generation_prompt=True, tokenize=False)`; tokens are that text encoded
with the fixture tokenizer without special tokens (as vLLM does for chat).

    <engine venv>/bin/python scripts/real-engine/tool_template_expect.py

Needs vLLM and transformers (the engine venv built by setup.sh). Prints one
block per case: token count, first and last ids, and the rendered text as a
JSON string (also a valid Rust string literal for these texts).
"""
import json
import sys
import types
from pathlib import Path

from transformers import PreTrainedTokenizerFast
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.renderers.chat_utils import _parse_chat_message_content, _postprocess_messages

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "tokenizers"
TOK = PreTrainedTokenizerFast(
    tokenizer_file=str(FIX / "tinyllama.json"), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
)
PLAIN = (FIX / "tinyllama.chat_template.jinja").read_text(encoding="utf-8")
TOOLS_TEMPLATE = (FIX / "tinyllama.tools.chat_template.jinja").read_text(encoding="utf-8")
PROBE = "{% for m in messages %}{{ m | tojson }}\n{% endfor %}{{ tools | tojson }}\n{{ tools[0] | tojson(indent=2) }}"

# The `tools` text of the tests, byte for byte: non-ASCII, nested schemas,
# keys out of alphabetical order (and the second tool's `function` before
# its `type`), floats, booleans, a tool without description or parameters.
TOOLS = r'''[{"type":"function","function":{"name":"get_weather","description":"Météo actuelle d'une ville — 東京 aussi","parameters":{"type":"object","properties":{"city":{"type":"string","description":"Nom de la ville"},"unit":{"enum":["celsius","fahrenheit"],"type":"string","default":"celsius"},"threshold":{"type":"number","default":21.5,"minimum":-273.15,"multipleOf":0.001,"examples":[2.0,1e-05,1e16,12345.678,-0.0,7]},"detail":{"type":"object","properties":{"hourly":{"type":"boolean","default":false},"days":{"type":"integer","maximum":16,"default":3}},"required":["days"]}},"required":["city"],"additionalProperties":false}}},{"function":{"parameters":{"properties":{"query":{"type":"string","description":"texte \"cité\"\tavec tab"}},"type":"object"},"name":"search"},"type":"function"},{"type":"function","function":{"name":"now","strict":true}}]'''

WEATHER = [
    {"role": "system", "content": "Tu es un assistant météo."},
    {"role": "user", "content": "Quel temps fait-il à Zürich et à 東京 ?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\", \"detail\": {\"days\": 2, \"hourly\": true}, \"threshold\": 18.0}"}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"unit\":\"celsius\",\"city\":\"東京\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temp\": 17.5, \"sky\": \"nuageux\"}"},
    {"role": "tool", "tool_call_id": "call_2", "content": "晴れ 22°C"},
    {"role": "assistant", "content": "À Zürich 17,5 °C, à 東京 22 °C."},
    {"role": "user", "content": "Et demain ?"},
]
ODD_ARGUMENTS = [
    {"role": "user", "content": "Cherche « météo demain » puis donne l'heure."},
    {"role": "assistant", "content": "Je cherche.", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{\"query\":\"météo demain\"}"}},
        {"id": "c2", "type": "function", "function": {"name": "now", "arguments": ""}},
        {"id": "c3", "type": "function", "function": {"name": "now", "arguments": "[1, 2]"}},
        {"id": "c4", "type": "function", "function": {"name": "now", "arguments": "{oops"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "Demain : pluie, 12.5 °C"},
    {"role": "tool", "tool_call_id": "c2", "content": ""},
]
PLAIN_CASES = {
    "plain_one": [{"role": "user", "content": "Hello there"}],
    "plain_system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}],
    "plain_multi": [
        {"role": "system", "content": "Réponds en français."},
        {"role": "user", "content": "Bonjour 🦀 ça va ?"},
        {"role": "assistant", "content": "Oui, très bien.\nEt vous ?"},
        {"role": "user", "content": ""},
    ],
    "plain_assistant_last": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
    "plain_assistant_null": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ],
}
CASES = {
    **{name: (TOOLS_TEMPLATE, messages, None) for name, messages in PLAIN_CASES.items()},
    "tools_plain_messages": (TOOLS_TEMPLATE, [{"role": "user", "content": "Quelle heure est-il ?"}], TOOLS),
    "tools_calls_results": (TOOLS_TEMPLATE, WEATHER, TOOLS),
    "calls_odd_arguments": (TOOLS_TEMPLATE, ODD_ARGUMENTS, TOOLS),
    "calls_without_tools": (TOOLS_TEMPLATE, ODD_ARGUMENTS, None),
    "probe": (PROBE, WEATHER, TOOLS),
}


class _Parser:
    model_config = types.SimpleNamespace(enable_prompt_embeds=False)

    def mm_placeholder_storage(self):
        return {}


class _Tracker:
    """Text-only: no media parts in these conversations."""

    def create_parser(self, mm_processor_kwargs=None):
        return _Parser()


def vllm_inputs(messages, tools_text):
    body = {"model": "m", "messages": messages}
    if tools_text is not None:
        body["tools"] = json.loads(tools_text)
    request = ChatCompletionRequest.model_validate(body)
    conversation = []
    for message in request.messages:
        conversation.extend(_parse_chat_message_content(message, _Tracker(), "string", False))
    _postprocess_messages(conversation)
    tools = None if request.tools is None else [tool.model_dump() for tool in request.tools]
    return conversation, tools


def render(template, messages, tools_text):
    conversation, tools = vllm_inputs(messages, tools_text)
    return TOK.apply_chat_template(
        conversation, tools=tools, chat_template=template, add_generation_prompt=True, tokenize=False
    )


def main():
    for name, (template, messages, tools_text) in CASES.items():
        text = render(template, messages, tools_text)
        ids = TOK(text, add_special_tokens=False)["input_ids"]
        print(f"== {name}: {len(ids)} tokens, first {ids[:4]}, last {ids[-4:]}")
        if template is TOOLS_TEMPLATE and tools_text is None:
            same = text == render(PLAIN, messages, None)
            print(f"   renders as tinyllama.chat_template.jinja: {same}")
            if not same and name.startswith("plain"):
                sys.exit(f"{name}: the tool template differs from the plain one")
        print(json.dumps(text, ensure_ascii=False))


if __name__ == "__main__":
    main()
