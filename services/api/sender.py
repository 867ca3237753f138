"""The API's way to the context service: commands as MQTT messages on `<enterprise>/<site>/_command/<kind>`,
answers on a reply topic of its own. The API never writes the record itself: the context service is
its only writer, whichever way a command comes in.

A command larger than the broker takes in one message is refused here (413) and never published: the
broker would drop the connection, and the client would send it again at every reconnect. Without a
connection a write is 503 at once; the client reconnects on its own, so writes work again as soon
as the broker is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from fastapi import status

from services.api.errors import ApiError
from services.context.commands import CommandResult
from uns.mqtt import BrokerAddress, MqttClient

logger = logging.getLogger(__name__)


class CommandUnansweredError(RuntimeError):
    """The broker or the context service did not take or answer a command in time."""


class CommandTooLargeError(ValueError):
    """A command larger than the broker takes in one message: never published."""


class CommandSender:
    def __init__(self, address: BrokerAddress, root: str, timeout_s: float = 5.0) -> None:
        self.address = address
        self.root = root
        self.timeout_s = timeout_s
        self.name = uuid.uuid4().hex[:12]
        self._client: MqttClient | None = None
        self._waiting: dict[str, asyncio.Future[CommandResult]] = {}
        self.connects = 0  # connections made to the broker (one, unless it went away)
        self.too_large = 0  # commands refused for their size (413), never published
        self._stopping = False

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
        self._stopping = True
        if self._client is not None:
            self._client.stop()
        for future in self._waiting.values():
            future.cancel()

    async def send(self, kind: str, body: dict[str, Any]) -> CommandResult:
        """Publish a command (QoS 1) and wait for the context service's answer. CommandTooLargeError
        for one above the broker's packet limit (whether connected or not: it would never go through),
        CommandUnansweredError without a connection or an answer in time."""
        client = self._client
        if client is None:
            raise CommandUnansweredError("the API is not connected to the broker; try again shortly")
        command_id = uuid.uuid4().hex
        payload = {**body, "id": command_id, "reply_to": f"{self.reply_prefix}/{command_id}"}
        data = json.dumps(payload).encode()
        if len(data) > client.max_payload:
            self.too_large += 1
            raise CommandTooLargeError(
                f"the {kind} command would be {len(data)} bytes, more than the broker takes in one"
                f" message ({client.max_payload} bytes); send fewer operations per request"
            )
        if not client.connected:
            raise CommandUnansweredError("the API is not connected to the broker; try again shortly")
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        try:
            refused = client.refused_publishes
            if not client.publish(f"{self.root}/_command/{kind}", data, 1, False):
                if client.refused_publishes > refused:
                    self.too_large += 1
                    raise CommandTooLargeError(f"the broker does not take a {len(data)}-byte {kind} command")
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
        self.connects += 1
        logger.info("API connected to the broker for commands")

    def on_disconnected(self, reason: str) -> None:
        if self._stopping:  # its own clean disconnect, at shutdown
            logger.info("API disconnected from the broker: %s", reason)
        else:
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


REFUSALS = (
    404,
    409,
    413,
    422,
    503,
)  # what the context service answers a command it does not apply (503: its record cannot be written now)


async def forward(sender: CommandSender, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send a command and turn a refusal into the HTTP error the context service named (404, 409,
    413 or 422; any other refusal is a 422); 413 for a command too large to send, 503 when the broker
    or the context service is not there."""
    try:
        result = await sender.send(kind, body)
    except CommandTooLargeError as exc:
        raise ApiError(status.HTTP_413_CONTENT_TOO_LARGE, str(exc), ["body"]) from exc
    except CommandUnansweredError as exc:
        raise ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    if not result.ok:
        code = result.status if result.status in REFUSALS else status.HTTP_422_UNPROCESSABLE_CONTENT
        raise ApiError(code, result.error or f"the context service refused the {kind} command")
    return result.detail
