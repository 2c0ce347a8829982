"""Sources: where Pinecall events come in (webhooks now; the WebSocket feed next)."""
