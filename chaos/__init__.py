"""The fault matrix (issue 9): real bridge processes broken on purpose, checked against Kafka."""
