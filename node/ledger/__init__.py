"""Payments on an EVM chain: the chain interface (embedded py-evm or JSON-RPC), the channel client, the
provider's durable voucher store and the `steppe chain` commands. See docs/payments.md."""
