// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @notice Test helper: a payer whose code refuses ether until told otherwise, to exercise the
/// contract's pull-payment fallback (`withdrawOwed`). Not deployed outside tests.
contract RefusingPayer {
    bool public accepting;

    function setAccepting(bool value) external {
        accepting = value;
    }

    /// @notice Call `target` with `data` and `msg.value` as this contract (e.g. PaymentChannels.open).
    function forward(address target, bytes calldata data) external payable returns (bytes memory) {
        (bool ok, bytes memory out) = target.call{value: msg.value}(data);
        if (!ok) {
            assembly {
                revert(add(out, 32), mload(out))
            }
        }
        return out;
    }

    receive() external payable {
        require(accepting, "refusing ether");
    }
}
