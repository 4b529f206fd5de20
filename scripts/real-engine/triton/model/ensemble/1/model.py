"""A TensorRT-LLM-shaped text model for a real Triton Inference Server on a CPU.

Triton's Python backend runs this file in its stub process. It stands in for
TensorRT-LLM's `ensemble` so that everything between the gateway and the
model is Triton's own: the HTTP frontend (`generate`, `generate_stream`),
request scheduling and its queue limit, cancellation, errors and metrics.

Generation (deterministic, whatever the prompt):
- token i is WORDS[i % len(WORDS)] followed by a space; `max_tokens` tokens,
  one every TOKEN_DELAY_MS (env GATEWAY_TRITON_TOKEN_MS, default 25);
- `stream: true`: one response per token, then an empty final response;
  otherwise one final response with the whole text;
- `stop_words`: generation ends before a word equal to one of them;
- `return_num_input_tokens`: `num_input_tokens` = the prompt's
  whitespace-separated words; `return_num_output_tokens`:
  `num_output_tokens` = the tokens in THIS response, as TensorRT-LLM's
  backend fills it (the size of the response's output ids: the new tokens
  when streaming, all of them otherwise).

Scripted failures, by markers in the prompt:
- `[fail-first]` or `[fail-first:MESSAGE]`: an error response (code
  UNAVAILABLE) before any token;
- `[raise]`: an exception in execute() before any token;
- `[fail-after:N]` or `[fail-after:N:MESSAGE]`: N tokens, then an error response.

Every request ends with one JSON line appended to events.jsonl in the folder
named by GATEWAY_TRITON_EVENTS (if set): {"event": "finished" | "cancelled" |
"failed", "id", "prompt", "tokens", "stream"}. "cancelled" means the model
saw request.is_cancelled() (the client went away) and stopped.
"""

import json
import os
import re
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "naïve", "café", "日本", "🙂"]
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
FAIL_FIRST = re.compile(r"\[fail-first(?::([^\]]*))?\]")
FAIL_AFTER = re.compile(r"\[fail-after:(\d+)(?::([^\]]*))?\]")


def token_text(i):
    return WORDS[i % len(WORDS)] + " "


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request, name, default):
    value = _input(request, name)
    if value is None or value.size == 0:
        return default
    return value.reshape(-1)[0].item()


def _strings(request, name):
    value = _input(request, name)
    if value is None:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]


class TritonPythonModel:
    def initialize(self, args):
        self.delay = float(os.environ.get("GATEWAY_TRITON_TOKEN_MS", "25")) / 1000.0
        folder = os.environ.get("GATEWAY_TRITON_EVENTS", "")
        self.events = os.path.join(folder, "events.jsonl") if folder else None
        if folder:
            os.makedirs(folder, exist_ok=True)
        self.lock = threading.Lock()

    def record(self, event, request, prompt, tokens, stream):
        if self.events is None:
            return
        line = json.dumps(
            {"event": event, "id": request.request_id(), "prompt": prompt, "tokens": tokens, "stream": stream},
            ensure_ascii=False,
        )
        with self.lock, open(self.events, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def cancelled_during(self, request, seconds):
        """Sleeps `seconds` in short slices; True as soon as the request is
        cancelled."""
        end = time.monotonic() + seconds
        while True:
            if request.is_cancelled():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.005))

    def execute(self, requests):
        # Generating here keeps the instance busy: later requests queue.
        for request in requests:
            self.generate(request)
        return None

    def generate(self, request):
        sender = request.get_response_sender()
        prompt = _strings(request, "text_input")[0]
        max_tokens = int(_scalar(request, "max_tokens", 0))
        stream = bool(_scalar(request, "stream", False))
        stops = set(_strings(request, "stop_words"))
        want_input = bool(_scalar(request, "return_num_input_tokens", False))
        want_output = bool(_scalar(request, "return_num_output_tokens", False))

        if "[raise]" in prompt:
            self.record("failed", request, prompt, 0, stream)
            raise RuntimeError("the model raised before its first token ([raise] in the prompt)")
        first = FAIL_FIRST.search(prompt)
        if first:
            message = first.group(1) or "the model failed before its first token ([fail-first] in the prompt)"
            error = pb_utils.TritonError(message, pb_utils.TritonError.UNAVAILABLE)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            self.record("failed", request, prompt, 0, stream)
            return
        after = FAIL_AFTER.search(prompt)
        fail_at = int(after.group(1)) if after else None

        def response(text, count):
            outputs = [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))]
            if want_input:
                outputs.append(pb_utils.Tensor("num_input_tokens", np.array([len(prompt.split())], dtype=np.int32)))
            if want_output:
                outputs.append(pb_utils.Tensor("num_output_tokens", np.array([count], dtype=np.int32)))
            return pb_utils.InferenceResponse(output_tensors=outputs)

        texts = []
        for i in range(max_tokens):
            if self.cancelled_during(request, self.delay):
                self.record("cancelled", request, prompt, len(texts), stream)
                return
            if fail_at is not None and i == fail_at:
                message = after.group(2) or f"the model failed after {i} tokens ([fail-after] in the prompt)"
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)
                self.record("failed", request, prompt, len(texts), stream)
                return
            if WORDS[i % len(WORDS)] in stops:
                break
            texts.append(token_text(i))
            if stream:
                sender.send(response(texts[-1], 1))
        if stream:
            sender.send(flags=FINAL)
        else:
            sender.send(response("".join(texts), len(texts)), flags=FINAL)
        self.record("finished", request, prompt, len(texts), stream)
