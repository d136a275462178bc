"""protoc output for proto/hopper/events/v1 (regenerate with scripts/gen-proto; never edit)."""
