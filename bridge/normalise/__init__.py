"""Normalise: every Pinecall shape in, one CloudEvent out. Pure and synchronous."""

from bridge.normalise.event import Channel, Event
from bridge.normalise.shapes import Unrecognised, event_time, normalise, split_body

__all__ = ["Channel", "Event", "Unrecognised", "event_time", "normalise", "split_body"]
