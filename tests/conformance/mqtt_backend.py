"""A cloud backend that knows only the station's AsyncAPI document (docs/asyncapi.yaml).

Written from the document alone, as a backend team would: it never imports the station's code.
From the document it takes the channels (addresses with parameters), which side sends each
(`operations.*.action`: `send` = the station publishes), the MQTT bindings (QoS, retain) and
the message schemas (AsyncAPI Schema: a superset of JSON Schema draft 7). It subscribes to
every channel the station sends on, checks every message it gets, and sends commands on the
channels the station receives on, waiting for their results. Every finding is a string in
`problems`; a conforming station leaves it empty.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import yaml


@dataclass(frozen=True)
class Channel:
    cid: str
    address: str  # with {parameters}
    action: str  # "send": the station publishes; "receive": the station subscribes
    qos: int
    retain: bool
    schema_ref: str

    def pattern(self, values: dict[str, str]) -> re.Pattern[str]:
        rx = re.escape(self.address)
        for k, v in values.items():
            rx = rx.replace(re.escape("{" + k + "}"), re.escape(v))
        rx = re.sub(r"\\\{[a-z_]+\\\}", "([^/]+)", rx)
        return re.compile(f"^{rx}$")

    def filter(self, values: dict[str, str]) -> str:
        topic = self.address
        for k, v in values.items():
            topic = topic.replace("{" + k + "}", v)
        return re.sub(r"\{[a-z_]+\}", "+", topic)

    def topic(self, values: dict[str, str]) -> str:
        topic = self.address
        for k, v in values.items():
            topic = topic.replace("{" + k + "}", v)
        assert "{" not in topic, topic
        return topic


@dataclass
class Got:
    cid: str
    topic: str
    payload: Any
    qos: int
    retain: bool


class Document:
    def __init__(self, path: Path) -> None:
        self.doc: dict[str, Any] = yaml.safe_load(path.read_text())
        self.version = str(self.doc["info"]["version"])
        ops = self.doc["operations"]
        self.channels: list[Channel] = []
        for op in ops.values():
            cid = op["channel"]["$ref"].rsplit("/", 1)[1]
            ch = self.doc["channels"][cid]
            (msg_ref,) = [m["$ref"] for m in ch["messages"].values()]
            msg = self.doc["components"]["messages"][msg_ref.rsplit("/", 1)[1]]
            mqtt = op.get("bindings", {}).get("mqtt", {})
            self.channels.append(
                Channel(
                    cid,
                    ch["address"],
                    op["action"],
                    int(mqtt.get("qos", 0)),
                    bool(mqtt.get("retain", False)),
                    msg["payload"]["$ref"],
                )
            )

    def channel(self, cid: str) -> Channel:
        return next(c for c in self.channels if c.cid == cid)

    def validate(self, ch: Channel, payload: Any) -> list[str]:
        # The whole document is the root, so `#/components/schemas/...` refs resolve.
        v = jsonschema.Draft7Validator({**self.doc, "$ref": ch.schema_ref})
        return [f"{e.json_path}: {e.message}" for e in v.iter_errors(payload)]

    def level_problems(self) -> list[str]:
        """The document promises plain levels: check its own addresses."""
        out = []
        for c in self.channels:
            for level in c.address.split("/"):
                if not re.fullmatch(r"\{[a-z_]+\}|[A-Za-z0-9_-]+", level):
                    out.append(f"{c.cid}: address level {level!r} is not plain")
        return out


@dataclass
class Backend:
    doc: Document
    host: str
    port: int
    station_id: str
    got: list[Got] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    room_events: list[Got] = field(default_factory=list)
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def params(self) -> dict[str, str]:
        return {"station_id": self.station_id}

    def _classify(self, topic: str) -> list[Channel]:
        return [
            c
            for c in self.doc.channels
            if c.action == "send" and c.pattern(self.params).match(topic)
        ]

    def on_message(self, topic: str, raw: bytes, qos: int, retain: bool) -> None:
        matches = self._classify(topic)
        if len(matches) != 1:
            self.problems.append(f"{topic}: matches {len(matches)} channels the station sends on")
            return
        ch = matches[0]
        try:
            payload = json.loads(raw)
        except ValueError:
            self.problems.append(f"{topic}: payload is not JSON: {raw[:80]!r}")
            return
        for err in self.doc.validate(ch, payload):
            self.problems.append(f"{topic}: {err}")
        # Subscribed at QoS >= 1, so the delivered QoS is the one the station published at.
        if qos != min(ch.qos, 1) and not (retain and ch.retain):
            self.problems.append(f"{topic}: delivered at QoS {qos}, document says {ch.qos}")
        if retain and not ch.retain:
            self.problems.append(f"{topic}: retained, the document says not retained")
        self.got.append(Got(ch.cid, topic, payload, qos, retain))
        self._new.set()

    def on(self, cid: str) -> list[Got]:
        return [g for g in self.got if g.cid == cid]

    async def wait_for(self, pred: Any, timeout_s: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not pred():
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            seen = sorted({g.topic for g in self.got})
            raise AssertionError(
                f"backend: no {what} within {timeout_s} s; topics seen: {seen}; "
                f"problems: {self.problems}"
            ) from None

    def check_events(self) -> None:
        """Events: msg_id `<boot_id>:<seq>`. Per boot the seqs have no gaps; per topic they
        arrive in order (MQTT orders a topic, not a set of subscriptions: the document says to
        restore the order across event types by seq). Duplicates are allowed (QoS 1)."""
        seqs: dict[str, set[int]] = {}
        per_topic: dict[str, list[int]] = {}
        for g in self.got:
            if g.cid.startswith("event"):
                boot, _, seq = str(g.payload["msg_id"]).partition(":")
                seqs.setdefault(boot, set()).add(int(seq))
                per_topic.setdefault(g.topic, [])
                if int(seq) not in per_topic[g.topic]:
                    per_topic[g.topic].append(int(seq))
        for boot, s in seqs.items():
            if sorted(s) != list(range(min(s), max(s) + 1)):
                self.problems.append(f"events of boot {boot}: gaps in {sorted(s)}")
        for topic, order in per_topic.items():
            if order != sorted(order):
                self.problems.append(f"{topic}: events out of order {order}")

    async def command(
        self, client: aiomqtt.Client, name: str, params: dict[str, Any], timeout_s: float = 15
    ) -> dict[str, Any]:
        """Send a command on its channel and return its result (validated on arrival)."""
        ch = self.doc.channel("cmd" + "".join(p.title() for p in name.split("_")))
        body = {
            "cmd_id": f"peer-{uuid.uuid4().hex[:12]}",
            "expires_at": (datetime.now(UTC) + timedelta(seconds=60))
            .isoformat()
            .replace("+00:00", "Z"),
            "params": params,
        }
        own = self.doc.validate(ch, body)
        assert not own, f"the peer's own {name} does not follow the document: {own}"
        await client.publish(ch.topic(self.params), json.dumps(body).encode(), qos=ch.qos)
        result_cid = ch.cid + "Result"

        def answered() -> bool:
            return any(g.payload.get("cmd_id") == body["cmd_id"] for g in self.on(result_cid))

        await self.wait_for(answered, timeout_s, f"result of {name}")
        (got,) = [g for g in self.on(result_cid) if g.payload.get("cmd_id") == body["cmd_id"]]
        return dict(got.payload)

    async def send_raw(self, client: aiomqtt.Client, name: str, raw: bytes) -> None:
        ch = self.doc.channel("cmd" + "".join(p.title() for p in name.split("_")))
        await client.publish(ch.topic(self.params), raw, qos=ch.qos)


async def subscribe_all(client: aiomqtt.Client, backend: Backend) -> None:
    """One subscription per channel the station sends on (parameters other than the station id
    as `+`), at the channel's QoS; plus `event/<room>/#` for one room, as the document's
    description offers."""
    filters = {c.filter(backend.params): c.qos for c in backend.doc.channels if c.action == "send"}
    for topic, qos in filters.items():
        await client.subscribe(topic, qos=max(qos, 1))


async def pump(client: aiomqtt.Client, backend: Backend) -> None:
    async for m in client.messages:
        payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
        backend.on_message(m.topic.value, payload, int(m.qos), bool(m.retain))
