"""The node cutter's reading of /proc/net/tcp and the rules it drops packets with."""

from tests.integration.netcut import Connection, drop_rules, parse_proc_net_tcp

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:7530 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 0100007F:A1B2 0100007F:7532 01 00000000:00000000 00:00000000 00000000     0        0 222 1
"""
# An IPv6 socket's IPv4-mapped addresses (Java's sockets are IPv6 ones), the columns shortened.
TCP6 = """\
  sl  local_address                         remote_address                        st inode
   0: 0000000000000000FFFF00000100007F:7530 0000000000000000FFFF00000100007F:C350 01 0 0 0 0 0 333
"""


def test_ports_states_and_inodes_are_read_from_either_table() -> None:
    assert parse_proc_net_tcp(TCP) == [
        Connection(inode=111, local_port=30000, remote_port=0, listening=True),
        Connection(inode=222, local_port=0xA1B2, remote_port=30002, listening=False),
    ]
    assert parse_proc_net_tcp(TCP6) == [
        Connection(inode=333, local_port=30000, remote_port=50000, listening=False)
    ]


def test_listening_ports_drop_all_their_packets_and_connections_only_their_own() -> None:
    accepted = Connection(inode=1, local_port=30000, remote_port=50000, listening=False)
    outgoing = Connection(inode=2, local_port=41394, remote_port=30003, listening=False)
    rules = drop_rules([30000, 30001], [accepted, outgoing])
    assert [" ".join(rule) for rule in rules] == [
        "-p tcp --dport 30000 -j DROP",
        "-p tcp --sport 30000 -j DROP",
        "-p tcp --dport 30001 -j DROP",
        "-p tcp --sport 30001 -j DROP",
        # An ephemeral port is matched with its peer's: another process may use it elsewhere.
        "-p tcp --sport 41394 --dport 30003 -j DROP",
        "-p tcp --sport 30003 --dport 41394 -j DROP",
    ]
