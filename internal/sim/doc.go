// Package sim runs the whole distributed protocol in one process under a
// seeded scheduler, as FoundationDB's simulation tests do: the coordinator's
// state machine (coordinator.Machine) and N workers' state machines
// (worker.Machine) exchange messages through simulated sessions, while the
// scheduler delays messages, interleaves the sessions in any order, breaks
// sessions (so that whatever was in flight is lost), freezes, kills and
// restarts workers, stops them gracefully, kills and restarts the
// coordinator, and fails checkpoint writes. The arithmetic is replaced by an
// exact integer stand-in: a step's gradient is a sum over the samples of its
// global batch, so a step computed from the wrong state, with a sample
// missing or counted twice, applied twice or skipped, ends in a state that
// differs from the single-process trajectory.
//
// Within one session messages keep their order and are not duplicated, as
// on a gRPC stream; a lost message means a broken session. Across sessions
// and workers any interleaving can happen.
//
// After every event the simulation checks the invariants of docs/design.md:
//
//   - every state a worker holds is the single-process state at its step:
//     no step is applied twice or skipped, and every update used the
//     gradient of exactly its global batch;
//   - a worker the coordinator shows as training is a member of the
//     current generation, in that generation, with a state between the
//     generation's start and the coordinator's next step (never a newcomer
//     that has not received the state);
//   - every committed step's shards partition its global batch;
//   - every epoch score equals the single-process score of that epoch;
//   - a worker that was dismissed after asking to leave exits only once a
//     stored checkpoint holds the state it trained to;
//   - a run ends (liveness): once faults stop, training finishes, every
//     worker and the newest checkpoint hold the single-process final state.
//
// A failing seed is a reproducible bug: Run(Options{Seed: s}) replays it.
package sim
