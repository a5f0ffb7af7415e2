"""The seed guide's TinyLlama client, guarded by a Hexarch sidecar.

Every call goes through the sidecar (HEXARCH_URL, default http://127.0.0.1:8080), which checks the
policies of `examples/hexarch.yaml` (rate limit, budget, parameter bounds, token caps, features...)
and forwards allowed calls to the TinyLlama app. A refusal raises `PolicyViolation` with the
policy's message. `make run` starts the sidecar with the demo model standing in for TinyLlama.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from hexarch_guardrails import Guardian, OPAConnectionError, PolicyViolation
from hexarch_guardrails.guardian import raise_for

# The seed's names for the app's addresses; here both mean "the sidecar in front of the app".
TINYLLAMA_INTERNAL = os.environ.get("HEXARCH_URL", "http://127.0.0.1:8080")
TINYLLAMA_EXTERNAL = TINYLLAMA_INTERNAL

# The seed's module-level Guardian (connects on first use only).
guardian = Guardian()


class TinyLlamaGuarded:
    """The TinyLlama app's API (`/api/chat`, `/api/chat-with-voice`, `/api/models`, `/api/stats`,
    `/health`) through the Hexarch sidecar, on the Guardian's pooled HTTP client.

    enforce=False turns refusals into warnings (PolicyWarning): the refused call returns "" (chat),
    b"" (voice) instead of raising.
    """

    def __init__(
        self,
        api_url: str | None = None,
        enforce: bool = True,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        guardian: Guardian | None = None,
    ) -> None:
        self.api_url = (api_url or os.environ.get("HEXARCH_URL") or TINYLLAMA_EXTERNAL).rstrip("/")
        self.enforce = enforce
        self.guardian = guardian or Guardian(
            url=self.api_url, api_key=api_key, enforce=enforce, timeout=timeout
        )

    def _post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        try:
            response = self.guardian.http.post(f"{self.api_url}{path}", json=payload)
        except httpx.HTTPError as exc:
            raise OPAConnectionError(f"{path} request failed: {exc}") from exc
        try:
            raise_for(response)
        except PolicyViolation as exc:
            if self.enforce:
                raise
            self.guardian.apply_decision({"allowed": True, "action": "warn", "reason": str(exc)}, path)
        return response

    def _get(self, path: str) -> Any:
        try:
            response = self.guardian.http.get(f"{self.api_url}{path}", timeout=5)
        except httpx.HTTPError as exc:
            raise OPAConnectionError(f"{path} request failed: {exc}") from exc
        raise_for(response)
        return response.json()

    def health_check(self) -> dict[str, Any]:
        """The TinyLlama app's /health."""
        result: dict[str, Any] = self._get("/health")
        return result

    def chat(
        self,
        message: str,
        model: str = "tinyllama",
        temperature: float = 0.7,
        num_predict: int = 128,
        system: str | None = None,
    ) -> str:
        """Ask the model; PolicyViolation when a policy refuses (e.g. temperature above 1.0)."""
        payload: dict[str, Any] = {
            "message": message,
            "model": model,
            "temperature": temperature,
            "num_predict": num_predict,
        }
        if system:
            payload["system"] = system
        response = self._post("/api/chat", payload)
        if response.status_code >= 400:
            return ""
        return str(response.json().get("response", ""))

    def chat_with_voice(
        self,
        message: str,
        model: str = "tinyllama",
        temperature: float = 0.7,
        num_predict: int = 128,
        voice: bool = True,
        output_file: str | None = None,
    ) -> str | bytes:
        """The spoken reply: saved to `output_file` (its path is returned) or returned as bytes."""
        payload = {
            "message": message,
            "model": model,
            "temperature": temperature,
            "num_predict": num_predict,
            "voice": voice,
        }
        response = self._post("/api/chat-with-voice", payload)
        audio = response.content if response.status_code < 400 else b""
        if output_file:
            Path(output_file).write_bytes(audio)
            return output_file
        return audio

    def list_models(self) -> list[Any]:
        models = self._get("/api/models").get("models", [])
        return list(models)

    def get_stats(self) -> dict[str, Any]:
        """The app's usage statistics (the policy lets admins and ops-bot read them)."""
        stats: dict[str, Any] = self._get("/api/stats")
        return stats


if __name__ == "__main__":
    llama = TinyLlamaGuarded()
    print(llama.health_check())
    try:
        print(llama.chat(message="What is machine learning in one sentence?", temperature=0.5))
        print(llama.chat(message="Explain Python", system="You are a programming expert.", num_predict=64))
        print(llama.chat_with_voice(message="Hello world", output_file="response.mp3"))
    except PolicyViolation as e:
        print(f"Policy blocked: {e}")
