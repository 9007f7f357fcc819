// Compile the contracts with the pinned solc from tools/npm and write their build artifacts.
//   node contracts/compile.mjs            write contracts/<Name>.json for each contract
//   node contracts/compile.mjs --stdout   print {name: artifact} as JSON instead (reproducibility test)
// The artifact is committed so a running node never needs a compiler.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "..", "tools", "npm", "package.json"));
const solc = require("solc");

// PaymentChannels is the product; RefusingPayer is a test helper (a payer whose code refuses ether).
const CONTRACTS = ["PaymentChannels", "RefusingPayer"];
const EVM_VERSION = "prague";

function build(name) {
  const file = name + ".sol";
  const source = readFileSync(join(here, file), "utf8");
  const input = {
    language: "Solidity",
    sources: { [file]: { content: source } },
    settings: {
      evmVersion: EVM_VERSION,
      optimizer: { enabled: true, runs: 200 },
      // No metadata hash: the bytes then depend only on the source and the settings, not on file paths.
      metadata: { bytecodeHash: "none", appendCBOR: false },
      outputSelection: { [file]: { [name]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  if (errors.length) {
    for (const e of errors) console.error(e.formattedMessage);
    process.exit(1);
  }
  const c = output.contracts[file][name];
  return {
    contractName: name,
    compiler: { name: "solc", version: solc.version(), evmVersion: EVM_VERSION, optimizer: input.settings.optimizer },
    sourceSha256: createHash("sha256").update(source).digest("hex"),
    abi: c.abi,
    bytecode: "0x" + c.evm.bytecode.object,
    deployedBytecode: "0x" + c.evm.deployedBytecode.object,
  };
}

const artifacts = Object.fromEntries(CONTRACTS.map((name) => [name, build(name)]));
if (process.argv.includes("--stdout")) process.stdout.write(JSON.stringify(artifacts));
else for (const [name, artifact] of Object.entries(artifacts)) {
  writeFileSync(join(here, name + ".json"), JSON.stringify(artifact, null, 2) + "\n");
}
