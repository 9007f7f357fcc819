// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Steppe payment channels
/// @notice Many unidirectional channels in one contract. A payer deposits ether for a payee, then signs
/// off-chain EIP-712 vouchers for a growing cumulative amount. The payee closes the channel with the best
/// voucher before it expires; after expiry the payer takes back whatever was not claimed.
/// @dev Channel ids come from a counter that only grows, so an id is never reused, even after a close.
/// Ether that cannot be sent (a payer or payee whose code refuses it) is credited to `owed` and pulled
/// later with `withdrawOwed`, so no one can block another party's close or reclaim.
contract PaymentChannels {
    struct Channel {
        address payer;
        uint64 expiresAt;
        address payee;
        bool open;
        uint256 deposit;
    }

    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(uint256 channelId,uint256 cumulativeAmount)");
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("SteppePaymentChannels");
    bytes32 private constant VERSION_HASH = keccak256("1");
    // secp256k1 n / 2: a signature with a larger s has a twin with n - s; accepting only the low one gives
    // each voucher exactly one valid encoding.
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    // Enough for a plain account or a simple receiving contract; a callee that burns more cannot make a
    // close run out of gas, it just gets paid through `owed`.
    uint256 private constant TRANSFER_GAS = 30_000;

    uint256 public nextChannelId = 1;
    mapping(uint256 => Channel) public channels;
    mapping(address => uint256) public owed;

    event ChannelOpened(
        uint256 indexed channelId, address indexed payer, address indexed payee, uint256 deposit, uint64 expiresAt
    );
    event ChannelToppedUp(uint256 indexed channelId, uint256 added, uint256 deposit, uint64 expiresAt);
    event ChannelClosed(uint256 indexed channelId, uint256 paid, uint256 refunded);
    event ChannelReclaimed(uint256 indexed channelId, uint256 refunded);
    event PaymentDeferred(address indexed to, uint256 amount);
    event OwedWithdrawn(address indexed to, uint256 amount);

    error ZeroPayee();
    error ZeroDeposit();
    error ExpiryInPast();
    error ExpiryMovedEarlier();
    error UnknownChannel();
    error ChannelNotOpen();
    error NotPayer();
    error NotPayee();
    error ChannelExpired();
    error ChannelNotExpired();
    error AmountOverDeposit();
    error BadSignature();
    error NothingOwed();
    error TransferFailed();

    /// @notice Open a channel to `payee` with `msg.value` as deposit, usable until `expiresAt` (unix s).
    function open(address payee, uint64 expiresAt) external payable returns (uint256 channelId) {
        if (payee == address(0)) revert ZeroPayee();
        if (msg.value == 0) revert ZeroDeposit();
        if (expiresAt <= block.timestamp) revert ExpiryInPast();
        channelId = nextChannelId++;
        channels[channelId] =
            Channel({payer: msg.sender, expiresAt: expiresAt, payee: payee, open: true, deposit: msg.value});
        emit ChannelOpened(channelId, msg.sender, payee, msg.value, expiresAt);
    }

    /// @notice Add `msg.value` to an open, unexpired channel and move its expiry to `expiresAt` (never earlier).
    function topUp(uint256 channelId, uint64 expiresAt) external payable {
        Channel storage c = _openChannel(channelId);
        if (msg.sender != c.payer) revert NotPayer();
        if (block.timestamp >= c.expiresAt) revert ChannelExpired();
        if (expiresAt < c.expiresAt) revert ExpiryMovedEarlier();
        c.deposit += msg.value;
        c.expiresAt = expiresAt;
        emit ChannelToppedUp(channelId, msg.value, c.deposit, expiresAt);
    }

    /// @notice The payee settles with the payer's voucher for `amount`: pays `amount`, refunds the rest.
    function close(uint256 channelId, uint256 amount, uint8 v, bytes32 r, bytes32 s) external {
        Channel storage c = _openChannel(channelId);
        if (msg.sender != c.payee) revert NotPayee();
        if (block.timestamp >= c.expiresAt) revert ChannelExpired();
        uint256 deposit = c.deposit;
        if (amount > deposit) revert AmountOverDeposit();
        address signer = voucherSigner(channelId, amount, v, r, s);
        if (signer == address(0) || signer != c.payer) revert BadSignature();
        address payer = c.payer;
        c.open = false;
        c.deposit = 0;
        emit ChannelClosed(channelId, amount, deposit - amount);
        _pay(msg.sender, amount);
        _pay(payer, deposit - amount);
    }

    /// @notice After expiry, the payer takes back the whole deposit of a channel the payee did not close.
    function reclaim(uint256 channelId) external {
        Channel storage c = _openChannel(channelId);
        if (msg.sender != c.payer) revert NotPayer();
        if (block.timestamp < c.expiresAt) revert ChannelNotExpired();
        uint256 deposit = c.deposit;
        c.open = false;
        c.deposit = 0;
        emit ChannelReclaimed(channelId, deposit);
        _pay(msg.sender, deposit);
    }

    /// @notice Pull ether that could not be pushed to the caller during a close or reclaim.
    function withdrawOwed() external {
        uint256 amount = owed[msg.sender];
        if (amount == 0) revert NothingOwed();
        owed[msg.sender] = 0;
        emit OwedWithdrawn(msg.sender, amount);
        (bool ok,) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    function domainSeparator() public view returns (bytes32) {
        // Computed on every call, not cached: after a chain split the chain id changes and old vouchers
        // must stop verifying.
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    function voucherDigest(uint256 channelId, uint256 amount) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, amount));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice Who signed this voucher, or the zero address when the signature is not acceptable
    /// (v outside {27, 28}, high s, or no recoverable key). `close` uses exactly this.
    function voucherSigner(uint256 channelId, uint256 amount, uint8 v, bytes32 r, bytes32 s)
        public
        view
        returns (address)
    {
        if (v != 27 && v != 28) return address(0);
        if (uint256(s) > HALF_N) return address(0);
        return ecrecover(voucherDigest(channelId, amount), v, r, s);
    }

    function _openChannel(uint256 channelId) private view returns (Channel storage c) {
        c = channels[channelId];
        if (c.payer == address(0)) revert UnknownChannel();
        if (!c.open) revert ChannelNotOpen();
    }

    function _pay(address to, uint256 amount) private {
        if (amount == 0) return;
        bool ok;
        assembly {
            // No return data is copied, so a callee cannot grief with a huge return buffer.
            ok := call(TRANSFER_GAS, to, amount, 0, 0, 0, 0)
        }
        if (!ok) {
            owed[to] += amount;
            emit PaymentDeferred(to, amount);
        }
    }
}
