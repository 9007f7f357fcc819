"""The simulation harness: real libp2p nodes on a simulated network (`sim.net`, `sim.transport`) under
trio's mock clock (`sim.clock`). See docs/sim.md."""
