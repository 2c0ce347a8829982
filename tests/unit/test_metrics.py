import re
from pathlib import Path
from typing import get_args

from prometheus_client import Counter, Gauge, Histogram

from bridge.connlimit import Listener
from bridge.http_timeouts import BAD_REQUEST_HEAD
from bridge.metrics import Metrics
from bridge.normalise.shapes import UnrecognisedReason
from bridge.routing import DropReason
from bridge.sources.calllog.follow import GIVE_UP_REASONS, REASONS
from bridge.sources.frames import FrameKind
from bridge.sources.reconnect import DisconnectReason
from bridge.sources.secretwatch import Label, Result
from bridge.sources.signature import Verdict

README = Path(__file__).resolve().parents[2] / "README.md"


def _rows() -> dict[str, tuple[set[str], str]]:
    """The README's metrics table: each metric's labels, and its meaning's text."""
    rows = re.findall(r"^\| `(pinecall_bridge_\w+)` \|([^|]*)\|(.*)\|$", README.read_text(), re.M)
    return {name: (set(re.findall(r"`(\w+)`", labels)), meaning) for name, labels, meaning in rows}


def _metrics() -> Metrics:
    metrics = Metrics()
    metrics.register_feed()
    metrics.register_registration()
    return metrics


def test_every_metric_is_in_the_readme_table_with_its_labels() -> None:
    rows = _rows()
    metrics = [m for m in vars(_metrics()).values() if isinstance(m, Counter | Gauge | Histogram)]
    assert len(metrics) > 40
    for metric in metrics:
        name = metric._name + ("_total" if isinstance(metric, Counter) else "")
        assert name in rows, f"{name} is not in README.md's Metrics table"
        labels = set(metric._labelnames)
        assert rows[name][0] == labels, f"{name}: README lists labels {rows[name][0]}, not {labels}"


def test_every_label_value_the_code_names_is_in_its_metrics_row() -> None:
    rows = _rows()
    closed: dict[str, set[str]] = {
        "pinecall_bridge_websocket_reconnects_total": set(get_args(DisconnectReason)),
        "pinecall_bridge_sse_reconnects_total": set(REASONS) | {"call", "org_feed"},
        "pinecall_bridge_sse_calls_given_up_total": set(GIVE_UP_REASONS),
        "pinecall_bridge_events_dead_lettered_total": set(get_args(UnrecognisedReason)),
        "pinecall_bridge_events_dropped_total": set(get_args(DropReason)),
        "pinecall_bridge_websocket_frames_total": set(get_args(FrameKind)),
        "pinecall_bridge_events_rejected_total": {
            v.value for v in Verdict if v is not Verdict.VALID
        }
        | {BAD_REQUEST_HEAD},
        "pinecall_bridge_secret_reloads_total": set(get_args(Result)) | set(get_args(Label)),
        **{
            f"pinecall_bridge_http_connections_{name}": set(get_args(Listener))
            for name in ("timed_out_total", "open", "max", "refused_total")
        },
    }
    # The values created at 0 from the start (for increase()) are named by the code too.
    for family in _metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        for sample in family.samples:
            named = (v for label, v in sample.labels.items() if label != "le")
            closed.setdefault(name, set()).update(named)
    for name, values in closed.items():
        assert name in rows, f"{name} is not in README.md's Metrics table"
        meaning = rows[name][1]
        missing = sorted(v for v in values if f"`{v}`" not in meaning)
        assert not missing, f"{name}: README's Metrics table does not name {missing}"
