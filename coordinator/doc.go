// Package coordinator runs the distributed trainer's coordinator: workers
// attach to it over gRPC Session streams and find it by gossip; it plans
// generations (ring order, ranks, the state each generation starts from),
// commits each step once every member reported the same reduced-gradient
// digest, has steps redone by a new generation when a member dies before the
// commit, collects epoch evaluations, takes checkpoints into bbolt off the
// training path, and answers status queries.
//
// The step and generation logic is Machine, a deterministic state machine fed
// with events (attach, detach, ready, report, eval, ring failure, tick) that
// returns the messages to send; Server does the I/O around it. Machine is
// tested without a network; Server with real gRPC and real processes.
//
// What it promises (DESIGN.md, "Training semantics"): a step takes effect
// only when committed; the global batch of a step never depends on the
// number of workers; no sample of an epoch is skipped or used twice (checked
// at every commit: the members' shards must partition the batch); every
// membership change starts a new generation and messages of other
// generations are ignored; a restarted coordinator resumes from its newest
// checkpoint that verifies.
package coordinator
