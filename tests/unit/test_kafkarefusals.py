import ssl

from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
)

from bridge.config import DedupSettings
from bridge.kafkarefusals import (
    REFUSED_MAX_WAIT,
    refused_authentication,
    refused_wait,
    session_refusal,
)


def test_refused_wait_grows_to_its_bound() -> None:
    assert [refused_wait(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert refused_wait(50) == REFUSED_MAX_WAIT


def test_a_refused_session_timeout_names_the_setting_and_the_brokers_bounds() -> None:
    bounds: dict[str, int | None] = {
        "group.min.session.timeout.ms": 12000,
        "group.max.session.timeout.ms": None,
    }
    said = session_refusal(DedupSettings(group="g1").session_timeout_ms, "g1", bounds)
    assert "group 'g1'" in said
    assert "BRIDGE_DEDUP__SESSION_TIMEOUT_MS (10000 ms)" in said
    assert "group.min.session.timeout.ms (12000 ms)" in said
    # Unread: Kafka's default said as such, not passed off as the cluster's.
    assert "group.max.session.timeout.ms (Kafka's default 1800000 ms; unread here)" in said


def test_refused_credentials_are_told_from_an_unreachable_kafka() -> None:
    assert refused_authentication(SaslAuthenticationFailed("Authentication failed"))
    assert refused_authentication(AuthenticationFailedError())
    assert refused_authentication(ssl.SSLCertVerificationError("certificate verify failed"))
    wrapped = KafkaConnectionError("no connection")
    wrapped.__cause__ = SaslAuthenticationFailed()
    assert refused_authentication(wrapped)
    assert not refused_authentication(KafkaConnectionError("Unable to bootstrap"))
    assert not refused_authentication(ConnectionRefusedError())


def test_a_tls_link_dropped_is_no_refusal_of_the_credentials() -> None:
    # An SSLError too, yet the peer went away (a broker restarting): a restart would not help.
    assert not refused_authentication(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))
    assert not refused_authentication(ssl.SSLZeroReturnError(6, "TLS/SSL connection closed"))
    assert not refused_authentication(ssl.SSLSyscallError(5, "Some I/O error occurred"))
    assert refused_authentication(ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]"))
