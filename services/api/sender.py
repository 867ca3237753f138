"""The API's way to the context service: commands as MQTT messages on `<enterprise>/<site>/_command/<kind>`,
answers on a reply topic of its own. The API never writes the record itself: the context service is
its only writer, whichever way a command comes in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from fastapi import HTTPException, status

from services.context.commands import CommandResult
from uns.mqtt import BrokerAddress, MqttClient

logger = logging.getLogger(__name__)


class CommandUnansweredError(RuntimeError):
    """The broker or the context service did not take or answer a command in time."""


class CommandSender:
    def __init__(self, address: BrokerAddress, root: str, timeout_s: float = 5.0) -> None:
        self.address = address
        self.root = root
        self.timeout_s = timeout_s
        self.name = uuid.uuid4().hex[:12]
        self._client: MqttClient | None = None
        self._waiting: dict[str, asyncio.Future[CommandResult]] = {}

    @property
    def reply_prefix(self) -> str:
        return f"{self.root}/_reply/api/{self.name}"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._client = MqttClient(
            f"uns-api.{self.name}",
            self.address,
            self,
            loop,
            subscriptions=((f"{self.reply_prefix}/+", 1),),
        )
        self._client.start()

    def stop(self) -> None:
        if self._client is not None:
            self._client.stop()
        for future in self._waiting.values():
            future.cancel()

    async def send(self, kind: str, body: dict[str, Any]) -> CommandResult:
        client = self._client
        if client is None or not client.connected:
            raise CommandUnansweredError("the API is not connected to the broker; try again shortly")
        command_id = uuid.uuid4().hex
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        payload = {**body, "id": command_id, "reply_to": f"{self.reply_prefix}/{command_id}"}
        try:
            if not client.publish(f"{self.root}/_command/{kind}", json.dumps(payload).encode(), 1, False):
                raise CommandUnansweredError("the broker did not take the command; try again shortly")
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError as exc:
            raise CommandUnansweredError(
                f"the context service did not answer within {self.timeout_s:g} s; is it running?"
            ) from exc
        finally:
            self._waiting.pop(command_id, None)

    # -- MqttHandler ----------------------------------------------------------------------------
    def on_connected(self) -> None:
        logger.info("API connected to the broker for commands")

    def on_disconnected(self, reason: str) -> None:
        logger.warning("API lost the broker: %s", reason)

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            result = CommandResult.model_validate_json(payload)
        except ValueError:
            logger.warning("unreadable answer on %s", topic)
            return
        future = self._waiting.get(result.id or "")
        if future is not None and not future.done():
            future.set_result(result)


async def forward(sender: CommandSender, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send a command and turn a refusal into the HTTP error the context service named."""
    try:
        result = await sender.send(kind, body)
    except CommandUnansweredError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    if not result.ok:
        raise HTTPException(result.status, result.error)
    return result.detail
