"""Real Wyoming clients against `perch run` (test/wyoming.test.ts): the `wyoming` package as Home Assistant's
wyoming integration uses it (stt.py: transcribe, audio-start, audio-chunk..., audio-stop, then read until a
transcript; conversation.py: one transcript with a context, then handled / not-handled / error), and the
`zeroconf` package browsing for _wyoming._tcp as Home Assistant's discovery does.

  python test/wyoming_clients.py HOST PORT INSTANCE_NAME WAV [WAV...]

Prints one JSON object with what each client saw.
"""

import asyncio
import json
import socket
import sys
import time
import wave

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.handle import Handled, NotHandled
from wyoming.info import Describe, Info

HOST, PORT, INSTANCE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
WAVS = sys.argv[4:]
# Home Assistant's pipeline hands the STT 16 kHz 16-bit mono in chunks of this many bytes (1024 samples).
CHUNK_BYTES = 2048


def pcm(path):
    with wave.open(path, "rb") as w:
        assert w.getframerate() == 16000 and w.getsampwidth() == 2 and w.getnchannels() == 1
        return w.readframes(w.getnframes())


async def read_until(client, *types, limit=60.0):
    """Events up to and including the first of `types` (as HA's loops do); None at the end of the connection."""
    seen = []
    deadline = time.monotonic() + limit
    while True:
        ev = await asyncio.wait_for(client.read_event(), timeout=max(0.1, deadline - time.monotonic()))
        if ev is None:
            return seen, None
        seen.append(ev)
        if ev.type in types:
            return seen, ev


async def describe():
    async with AsyncTcpClient(HOST, PORT) as c:
        t0 = time.monotonic()
        await c.write_event(Describe().event())
        _, ev = await read_until(c, "info")
        info = Info.from_event(ev)
        return {
            "ms": round((time.monotonic() - t0) * 1000),
            "asr": [{"name": p.name, "installed": p.installed, "streaming": p.supports_transcript_streaming,
                     "languages": [l for m in p.models for l in m.languages]} for p in info.asr],
            "handle": [{"name": p.name, "installed": p.installed, "languages": [l for m in p.models for l in m.languages]}
                       for p in info.handle],
            "satellite": info.satellite is not None,
        }


async def transcribe(data, language="en", pace_s=0.0):
    """Home Assistant's stt.py sequence; pace_s > 0 sends the chunks at the microphone's pace."""
    async with AsyncTcpClient(HOST, PORT) as c:
        await c.write_event(Transcribe(language=language).event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for i in range(0, len(data), CHUNK_BYTES):
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=data[i : i + CHUNK_BYTES]).event())
            if pace_s:
                await asyncio.sleep(pace_s)
        stopped = time.monotonic()
        await c.write_event(AudioStop().event())
        seen, ev = await read_until(c, "transcript", "error")
        after = time.monotonic() - stopped
        # The streaming events a 1.7+ peer gets after the transcript.
        tail = []
        if ev is not None and ev.type == "transcript":
            more, _ = await read_until(c, "transcript-stop", limit=5.0)
            tail = [e.type for e in more]
        result = {"types": [e.type for e in seen] + tail, "after_stop_ms": round(after * 1000)}
        if ev is None:
            result["closed"] = True
        elif ev.type == "error":
            result["error"] = Error.from_event(ev).text
        else:
            t = Transcript.from_event(ev)
            result["text"] = t.text
            result["language"] = t.language
            result["chunks"] = "".join(e.data.get("text", "") for e in seen if e.type == "transcript-chunk")
        return result


async def handle(text, conversation_id):
    async with AsyncTcpClient(HOST, PORT) as c:
        # conversation.py's one event: the text, the pipeline's language and a context with the conversation id.
        await c.write_event(Transcript(text=text, language="en", context={"conversation_id": conversation_id}).event())
        seen, ev = await read_until(c, "handled", "not-handled", "error")
        if ev is None:
            return {"closed": True}
        if Handled.is_type(ev.type):
            out = {"handled": Handled.from_event(ev).text}
        elif NotHandled.is_type(ev.type):
            out = {"not_handled": NotHandled.from_event(ev).text}
        else:
            out = {"error": Error.from_event(ev).text}
        out["types"] = [e.type for e in seen]
        out["chunks"] = "".join(e.data.get("text", "") for e in seen if e.type == "handled-chunk")
        return out


async def raw(frames: bytes, wait_s=5.0):
    """Writes raw bytes, returns the events read until the server closes (or wait_s passes)."""
    reader, writer = await asyncio.open_connection(HOST, PORT)
    writer.write(frames)
    await writer.drain()
    events = []
    try:
        while True:
            ev = await asyncio.wait_for(async_read_event(reader), timeout=wait_s)
            if ev is None:
                break
            events.append({"type": ev.type, **({"text": ev.data.get("text")} if "text" in ev.data else {})})
    except asyncio.TimeoutError:
        events.append({"type": "timeout"})
    writer.close()
    return events


async def vanish_mid_utterance(data):
    """A satellite that goes away in the middle of an utterance (network loss)."""
    reader, writer = await asyncio.open_connection(HOST, PORT)
    await async_write_event(Transcribe(language="en").event(), writer)
    await async_write_event(AudioStart(rate=16000, width=2, channels=1).event(), writer)
    await async_write_event(AudioChunk(rate=16000, width=2, channels=1, audio=data[: len(data) // 2]).event(), writer)
    writer.transport.abort()


def browse(timeout=10.0):
    """Home Assistant's discovery: browse _wyoming._tcp.local. and resolve our instance."""
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

    zc = Zeroconf()
    found = {}
    try:
        def on_change(zeroconf, service_type, name, state_change):
            if state_change is ServiceStateChange.Added:
                found[name] = None

        ServiceBrowser(zc, "_wyoming._tcp.local.", handlers=[on_change])
        want = f"{INSTANCE}._wyoming._tcp.local."
        deadline = time.monotonic() + timeout
        while want not in found and time.monotonic() < deadline:
            time.sleep(0.1)
        if want not in found:
            return {"names": sorted(found)}
        info = zc.get_service_info("_wyoming._tcp.local.", want, timeout=3000)
        return {"names": sorted(found), "port": info.port if info else None,
                "addresses": info.parsed_addresses() if info else []}
    finally:
        zc.close()


async def main():
    out = {}
    out["describe"] = await describe()
    clips = [pcm(p) for p in WAVS]
    # One at a time, at full speed; then the first again at the microphone's pace (20 ms chunks... of 64 ms).
    out["transcripts"] = [await transcribe(d) for d in clips]
    out["paced"] = await transcribe(clips[0], pace_s=CHUNK_BYTES / 2 / 16000)
    # Several satellites at once.
    out["concurrent"] = await asyncio.gather(*(transcribe(d) for d in clips))
    out["turns"] = [await handle("What is the capital of France?", "conv-1"), await handle("And of Italy?", "conv-1")]

    # Bad input; after each the server still transcribes.
    big = 10 * 1024 * 1024
    out["bad"] = {
        "not_json": await raw(b"hello there\n"),
        "no_type": await raw(b'{"data": {}}\n'),
        "huge_payload": await raw(json.dumps({"type": "audio-chunk", "payload_length": big}).encode() + b"\n"),
        "wrong_width": await raw(
            json.dumps({"type": "audio-start", "data": {"rate": 16000, "width": 4, "channels": 1}}).encode() + b"\n"
        ),
        "stop_without_audio": await raw(json.dumps({"type": "audio-stop"}).encode() + b"\n"),
        "empty_turn": await raw(json.dumps({"type": "transcript", "data": {"text": "  "}}).encode() + b"\n", wait_s=2.0),
        "unknown_then_ping": await raw(
            json.dumps({"type": "select-program", "data": {"name": "x"}}).encode() + b"\n"
            + json.dumps({"type": "ping", "data": {"text": "p1"}}).encode() + b"\n",
            wait_s=2.0,
        ),
    }
    await vanish_mid_utterance(clips[0])
    out["after_bad"] = await transcribe(clips[1])
    out["zeroconf"] = await asyncio.get_running_loop().run_in_executor(None, browse)
    print(json.dumps(out))


asyncio.run(main())
