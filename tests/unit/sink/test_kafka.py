import ssl
from pathlib import Path

import pytest

from bridge.config import KafkaSettings
from bridge.metrics import Metrics
from bridge.sink.kafka import KafkaSink, Record, client_options

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def test_plaintext_options() -> None:
    options = client_options(KafkaSettings(bootstrap_servers=["k:9092"]))
    assert options["bootstrap_servers"] == ["k:9092"]
    assert options["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in options
    assert "sasl_mechanism" not in options


def test_sasl_scram_options() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="bridge",
        sasl_password="pw",
    )
    options = client_options(settings)
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == (
        "SCRAM-SHA-512",
        "bridge",
    )
    assert options["sasl_plain_password"] == "pw"


@pytest.mark.skipif(not SYSTEM_CA.is_file(), reason="no system CA bundle on this machine")
def test_tls_options_build_a_context() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_username="u",
        sasl_password="p",
        ssl_cafile=SYSTEM_CA,
    )
    options = client_options(settings)
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


async def test_stop_before_start_and_twice_is_safe() -> None:
    metrics = Metrics()
    sink = KafkaSink(KafkaSettings(), metrics)
    await sink.stop()
    await sink.stop()
    assert metrics.registry.get_sample_value("pinecall_bridge_kafka_connected") == 0


async def test_send_without_producer_raises() -> None:
    sink = KafkaSink(KafkaSettings(), Metrics())
    with pytest.raises(Exception, match="not running"):
        await sink.send(Record("t", None, b"v"))


def test_partitioner_matches_aiokafkas_default() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from bridge.sink.kafka import partition_for

    partitions = list(range(12))
    for n in range(500):
        key = f"CA_{n:016x}".encode()
        assert partition_for(key, partitions, partitions) == DefaultPartitioner()(
            key, partitions, partitions
        )
    assert partition_for(None, partitions, [3]) == 3
