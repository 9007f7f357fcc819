"""Pick the chain a node uses: a JSON-RPC URL when configured, else the embedded chain under its home."""

from __future__ import annotations

from pathlib import Path

from node.ledger.abc import Ledger


def open_ledger(home: Path, rpc_url: str = "", *, chain_id: int = 0) -> Ledger:
    """``rpc_url`` empty: the embedded chain in ``home/chain.sqlite`` (created on first use, chain id
    ``chain_id`` or 1337). Raises `LedgerError` when the URL does not answer, `ConfigError` when the
    embedded chain was created with another chain id, or when a JSON-RPC node reports another one."""
    if rpc_url:
        from node.ledger.rpc import RpcLedger
        from protocol.errors import ConfigError

        ledger: Ledger = RpcLedger(rpc_url)
        if chain_id and ledger.chain_id != chain_id:
            raise ConfigError(f"chain.chain_id is {chain_id} but {rpc_url} is chain {ledger.chain_id}")
        return ledger
    from node.ledger.embedded import DEFAULT_CHAIN_ID, open_chain_at_home
    from node.ledger.embedded_ledger import EmbeddedLedger

    return EmbeddedLedger(open_chain_at_home(home, chain_id=chain_id or DEFAULT_CHAIN_ID))
