"""Seeded call lives: each call a sequence of log entries, seq 1, 2, 3... Pure."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

AGENTS = ("support", "sales", "billing")
# Two answers hold non-ASCII (é, €, an emoji: a surrogate pair when escaped): edited in place, so
# seeds keep their calls. The call log's SSE sends them as \u escapes, webhooks as UTF-8.
TOPICS = (
    ("move my appointment to Friday", "I can move it to Friday at ten, does that work?"),
    ("check the status of my order", "Your order shipped yesterday and arrives on Thursday."),
    ("cancel my subscription", "I have cancelled it; you keep access until the month ends."),
    ("update my billing address", "Done, the new address is on your account now."),
    ("speak to someone about an invoice", "I see it, José: the 15 € late fee has been waived."),
    ("know your opening hours", "We are open from nine to six, Monday to Saturday."),
)
FOLLOW_UPS = (
    ("yes that works for me", "Great 👍 anything else I can help with?"),
    ("can you send me a confirmation", "I have sent a confirmation to your email."),
    ("what was the reference number", "The reference is on its way by text message."),
    ("no that is all thanks", "Thank you for calling, have a good day."),
)
END_REASONS = ("completed", "hangup", "completed", "transferred")


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a call's log, before it is stamped with the time it is emitted."""

    seq: int
    type: str
    data: dict[str, Any]
    ephemeral: bool = False


@dataclass(frozen=True, slots=True)
class CallScript:
    call: str
    agent: str
    steps: tuple[Step, ...]

    def entry(self, step: Step, ts: float) -> dict[str, Any]:
        """The platform's log entry, keys in its order."""
        return {
            "seq": step.seq,
            "ts": ts,
            "call": self.call,
            "agent": self.agent,
            "type": step.type,
            "ephemeral": step.ephemeral,
            "data": step.data,
        }


def call_rng(seed: int, index: int, purpose: str) -> random.Random:
    """A generator per call and purpose, so a call's content does not depend on its neighbours."""
    return random.Random(f"{seed}:{index}:{purpose}")


def generate_calls(seed: int, count: int) -> list[CallScript]:
    return list(iter_calls(seed, count))


def iter_calls(seed: int, count: int) -> Iterator[CallScript]:
    """generate_calls() one call at a time, made when asked for: a long run holds only the
    calls it is playing (200k calls made up front took 1.4 GB)."""
    return (generate_call(call_rng(seed, index, "script")) for index in range(count))


def generate_call(rng: random.Random) -> CallScript:
    """call.started, a few turns (with interim transcripts), call.ended, call.summary, and
    `call.score`, the last line of every call log on the platform (it seals the log).

    The log's own names and shapes: `turn.user`/`turn.agent` for final utterances,
    `agent.state` for the agent's state, the recording in `call.summary`'s data.
    """
    call = f"CA_{rng.getrandbits(64):016x}"
    agent = rng.choice(AGENTS)
    topic = rng.choice(TOPICS)
    turns = [topic, *rng.sample(FOLLOW_UPS, rng.randint(1, 3))]
    kinds: list[tuple[str, dict[str, Any], bool]] = [
        (
            "call.started",
            {
                "from": f"+1555{rng.randrange(10**7):07d}",
                "to": "+15550199",
                "direction": rng.choice(("inbound", "outbound")),
            },
            False,
        )
    ]
    for said, answer in turns:
        kinds.extend(("user.transcript", {"text": partial}, True) for partial in _partials(said))
        kinds.append(("turn.user", {"text": said}, False))
        kinds.append(("agent.state", {"state": "thinking"}, False))
        kinds.append(("turn.agent", {"text": answer}, False))
    duration = round(rng.uniform(8.0, 30.0) * len(turns), 1)
    kinds.append(("call.ended", {"duration": duration, "reason": rng.choice(END_REASONS)}, False))
    transcript = [
        {"role": role, "text": text}
        for said, answer in turns
        for role, text in (("user", said), ("agent", answer))
    ]
    summary = {
        "summary": f"The caller wanted to {topic[0]}; {len(turns)} turns.",
        "transcript": transcript,
        "recording": f"https://recordings.pinecall.sim/{call}.wav",
    }
    kinds.append(("call.summary", summary, False))
    # pinecall-runtime's CallScore for an agent without judges; no draw, so seeds keep their calls.
    score: dict[str, Any] = {
        "passed": None,
        "not_judged": "no judges",
        "judges": [],
        "judge_calls": 0,
    }
    kinds.append(("call.score", score, False))
    steps = tuple(
        Step(seq, kind, data, ephemeral)
        for seq, (kind, data, ephemeral) in enumerate(kinds, start=1)
    )
    return CallScript(call, agent, steps)


def _partials(text: str) -> list[str]:
    """Interim transcripts grow word by word, as a recogniser's do, a few of them per turn."""
    words = text.split()
    return [" ".join(words[:end]) for end in range(2, len(words), 2)]
